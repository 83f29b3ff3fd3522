import { InitialSchema1767225600000 } from './1767225600000-initial-schema';

/** Every migration, oldest first. */
export const MIGRATIONS = [InitialSchema1767225600000];
