import { EventEmitter } from 'node:events';

/**
 * Short messages to every instance of the deployment (this one included), e.g. "forget what you
 * remember about this narinfo". Best effort: a notice that cannot be sent is lost, so whatever it
 * is about must also settle by itself (a memory with a TTL).
 */
export interface Notices {
  /** Sends `message` on `topic` to every instance. Rejects when it could not be sent. */
  publish(topic: string, message: string): Promise<void>;
  /** Calls `handler` with every message on `topic`, from any instance. */
  subscribe(topic: string, handler: (message: string) => void): void;
  close(): Promise<void>;
}

export const NOTICES = Symbol('NOTICES');

/** One instance: notices stay in the process. */
export class LocalNotices implements Notices {
  private readonly events = new EventEmitter();

  constructor() {
    this.events.setMaxListeners(0);
  }

  publish(topic: string, message: string): Promise<void> {
    this.events.emit(topic, message);
    return Promise.resolve();
  }

  subscribe(topic: string, handler: (message: string) => void): void {
    this.events.on(topic, handler);
  }

  close(): Promise<void> {
    this.events.removeAllListeners();
    return Promise.resolve();
  }
}
