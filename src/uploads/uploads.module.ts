import { Module, type DynamicModule } from '@nestjs/common';
import type { AccessConfig } from '../config/app-config';
import { DocumentsModule } from '../documents/documents.module';
import { NarModule } from '../nar/nar.module';
import { VerificationModule } from '../nar/verification/verification.module';
import { NarInfoModule } from '../narinfo/narinfo.module';
import { StorageModule } from '../storage/storage.module';
import { DeleteService } from './delete.service';
import { DeletesController, UploadsController } from './uploads.controller';
import { UploadService } from './upload.service';

/**
 * Uploads (`PUT`, with --cache-allow-put-verb) and deletes (`DELETE`, with
 * --cache-allow-delete-verb). Without those settings their routes do not exist and narwhal answers
 * 405, as before.
 */
@Module({})
export class UploadsModule {
  static forRoot(access: AccessConfig): DynamicModule {
    return {
      module: UploadsModule,
      imports: [DocumentsModule, NarModule, NarInfoModule, StorageModule, VerificationModule],
      controllers: [
        ...(access.allowPut ? [UploadsController] : []),
        ...(access.allowDelete ? [DeletesController] : []),
      ],
      providers: [UploadService, DeleteService],
    };
  }
}
