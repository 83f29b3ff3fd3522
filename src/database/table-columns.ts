/** The columns of `nar_files`, in the order the hand-written statements bind them. */
export const NAR_FILE_COLUMNS = [
  'key',
  'upstream_url',
  'compression',
  'file_hash',
  'file_size',
  'nar_hash',
  'nar_size',
  'stored_size',
  'created_at',
  'last_accessed_at',
] as const;

/** Every narinfos column but the key: a narinfo saved again replaces all of them. */
export const NARINFO_REPLACED_COLUMNS = [
  'store_path',
  'nar_key',
  'compression',
  'file_hash',
  'file_size',
  'nar_hash',
  'nar_size',
  'deriver',
  'system',
  'ca',
  'upstream_url',
  'own_signature',
  'created_at',
  'last_accessed_at',
] as const;

/** The columns of `narinfos`, in the order the hand-written statements bind them. */
export const NARINFO_COLUMNS = ['hash', ...NARINFO_REPLACED_COLUMNS] as const;
