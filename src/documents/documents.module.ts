import { Module } from '@nestjs/common';
import { VerificationModule } from '../nar/verification/verification.module';
import { SigningModule } from '../signing/signing.module';
import { StorageModule } from '../storage/storage.module';
import { UpstreamModule } from '../upstream/upstream.module';
import { DocumentStore } from './document-store';
import { DocumentsController } from './documents.controller';
import { ListingService } from './listing.service';
import { LogService } from './log.service';
import { RealisationService } from './realisation.service';

/**
 * The rest of the binary-cache protocol: NAR listings, build logs and realisations, fetched from
 * the upstreams (or, for listings, made from stored NARs) and kept in storage (DocumentStore).
 */
@Module({
  imports: [SigningModule, StorageModule, UpstreamModule, VerificationModule],
  controllers: [DocumentsController],
  providers: [DocumentStore, ListingService, LogService, RealisationService],
  exports: [DocumentStore, ListingService],
})
export class DocumentsModule {}
