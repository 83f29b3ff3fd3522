import { AccessTokenEntity } from './access-token.entity';
import { NarFileEntity } from './nar-file.entity';
import { NarInfoReferenceEntity } from './narinfo-reference.entity';
import { NarInfoSignatureEntity } from './narinfo-signature.entity';
import { NarInfoEntity } from './narinfo.entity';
import { PinEntity } from './pin.entity';

export {
  AccessTokenEntity,
  NarFileEntity,
  NarInfoEntity,
  NarInfoReferenceEntity,
  NarInfoSignatureEntity,
  PinEntity,
};
export const ENTITIES = [
  NarInfoEntity,
  NarInfoReferenceEntity,
  NarInfoSignatureEntity,
  NarFileEntity,
  AccessTokenEntity,
  PinEntity,
];
