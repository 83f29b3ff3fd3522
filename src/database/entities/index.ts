import { NarFileEntity } from './nar-file.entity';
import { NarInfoReferenceEntity } from './narinfo-reference.entity';
import { NarInfoSignatureEntity } from './narinfo-signature.entity';
import { NarInfoEntity } from './narinfo.entity';

export { NarFileEntity, NarInfoEntity, NarInfoReferenceEntity, NarInfoSignatureEntity };
export const ENTITIES = [
  NarInfoEntity,
  NarInfoReferenceEntity,
  NarInfoSignatureEntity,
  NarFileEntity,
];
