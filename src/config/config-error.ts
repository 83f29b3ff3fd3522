/** A bad setting: startup stops with this message, which names the setting. */
export class ConfigError extends Error {
  constructor(
    readonly setting: string,
    message: string,
  ) {
    super(`--${setting}: ${message}`);
    this.name = 'ConfigError';
  }
}
