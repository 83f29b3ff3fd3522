import { Logger } from '@nestjs/common';
import type { Notices } from '../notices';
import { createClient, type RedisLockConfig } from './redis-locker';

/**
 * Notices through Redis pub/sub, on channels `<key prefix>notice:<topic>` (a Redis Cluster passes
 * published messages to every node). Two connections of their own: a subscribed connection cannot
 * publish. Publishing fails at once while Redis is unreachable; the subscriptions are made again
 * whenever the connection is ready (at start and after Redis comes back).
 */
export class RedisNotices implements Notices {
  private readonly logger = new Logger('notices');
  private readonly publisher: ReturnType<typeof createClient>;
  private readonly subscriber: ReturnType<typeof createClient>;
  private readonly handlers = new Map<string, ((message: string) => void)[]>();

  constructor(private readonly config: RedisLockConfig) {
    this.publisher = createClient(config, { connectionName: 'narwhal-notices' });
    this.subscriber = createClient(config, { connectionName: 'narwhal-notices-sub' });
    // Errors show in the locker's status and /readyz; here they only must not be unhandled.
    this.publisher.on('error', () => undefined);
    this.subscriber.on('error', () => undefined);
    this.subscriber.on('message', (channel: string, message: string) => {
      for (const handler of this.handlers.get(channel) ?? []) handler(message);
    });
    // Subscribes (again) whenever the connection is ready: at start, and after Redis comes back.
    this.subscriber.on('ready', () => this.subscribeAll());
  }

  private subscribeAll(): void {
    const channels = [...this.handlers.keys()];
    if (channels.length === 0 || this.subscriber.status !== 'ready') return;
    this.subscriber.subscribe(...channels).catch((e: Error) => {
      this.logger.warn(`cannot subscribe to notices: ${e.message}`);
    });
  }

  private channel(topic: string): string {
    return `${this.config.keyPrefix}notice:${topic}`;
  }

  async publish(topic: string, message: string): Promise<void> {
    await this.publisher.publish(this.channel(topic), message);
  }

  subscribe(topic: string, handler: (message: string) => void): void {
    const channel = this.channel(topic);
    const list = this.handlers.get(channel);
    if (list) {
      list.push(handler);
      return;
    }
    this.handlers.set(channel, [handler]);
    this.subscribeAll();
  }

  async close(): Promise<void> {
    for (const client of [this.publisher, this.subscriber]) {
      if (client.status === 'ready') await client.quit().catch(() => client.disconnect());
      else client.disconnect();
    }
  }
}
