import type { ValueTransformer } from 'typeorm';

/** bigint columns arrive as strings from some drivers; narwhal's sizes and times fit in a JS number. */
export const bigintNumber: ValueTransformer = {
  to: (v: number | null | undefined) => v,
  from: (v: string | number | null) => (v === null || v === undefined ? v : Number(v)),
};
