import { Module } from '@nestjs/common';
import { VERIFIER_POOL_PROVIDER, VerifierPool } from './verifier-pool';

/** The verifier threads, shared by every flow that checks or decodes NARs. */
@Module({ providers: [VERIFIER_POOL_PROVIDER], exports: [VerifierPool] })
export class VerificationModule {}
