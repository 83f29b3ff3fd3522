import { Logger, Module } from '@nestjs/common';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { loadOrCreateSecretKey } from './key-file';
import { SIGNING_KEY, SigningService } from './signing.service';

@Module({
  providers: [
    {
      provide: SIGNING_KEY,
      inject: [APP_CONFIG],
      useFactory: async (config: AppConfig) => {
        const logger = new Logger('signing');
        const { key, generated, looseMode } = await loadOrCreateSecretKey(
          config.signing.secretKeyPath,
          config.hostname,
        );
        if (generated)
          logger.log(`generated signing key "${key.name}" at ${config.signing.secretKeyPath}`);
        if (looseMode !== undefined) {
          logger.warn(
            `${config.signing.secretKeyPath} is readable by others (mode ${looseMode.toString(8)}); chmod 600 it`,
          );
        }
        if (key.name !== config.hostname) {
          logger.warn(
            `signing key is named "${key.name}", not the cache hostname "${config.hostname}"; keeping the key's name`,
          );
        }
        return key;
      },
    },
    SigningService,
  ],
  exports: [SigningService],
})
export class SigningModule {}
