import { Module } from '@nestjs/common';
import { PinService } from './pin.service';
import { PinsController } from './pins.controller';

/** Pins: `/_narwhal/pins` (with a `pin` token); the LRU job reads them from the database. */
@Module({
  controllers: [PinsController],
  providers: [PinService],
})
export class PinsModule {}
