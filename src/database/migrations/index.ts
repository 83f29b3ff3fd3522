import { InitialSchema1767225600000 } from './1767225600000-initial-schema';
import { NullableNarHash1767312000000 } from './1767312000000-nullable-nar-hash';
import { TokensAndPins1767398400000 } from './1767398400000-tokens-and-pins';

/** Every migration, oldest first. */
export const MIGRATIONS = [
  InitialSchema1767225600000,
  NullableNarHash1767312000000,
  TokensAndPins1767398400000,
];
