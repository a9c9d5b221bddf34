//! The master keys that wrap participants' data keys: the configured ones
//! (TEND_MASTER_KEYS or its file), or for the embedded database a
//! development key kept in its data directory; and the recipients' keys of
//! pseudonymous data (TEND_RECIPIENT_KEYS or its file).

use tend_privacy::{MasterKeys, Recipients};

use crate::Result;
use crate::config::{DatabaseOptions, KeyOptions};
use crate::database::Database;

/// The configured recipients, read and parsed; none when none are.
pub(crate) fn recipients(keys: &KeyOptions) -> Result<Recipients> {
    let spec = match (&keys.recipient_keys, &keys.recipient_keys_file) {
        (Some(spec), _) => spec.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                format!(
                    "cannot read TEND_RECIPIENT_KEYS_FILE {}: {e}",
                    path.display()
                )
            })?
            .trim()
            .to_owned(),
        (None, None) => return Ok(Recipients::default()),
    };
    spec.parse::<Recipients>()
        .map_err(|e| format!("TEND_RECIPIENT_KEYS: {e}").into())
}

/// The configured master keys, read and parsed; `None` when none are.
pub(crate) fn configured(keys: &KeyOptions) -> Result<Option<MasterKeys>> {
    let spec = match (&keys.master_keys, &keys.master_keys_file) {
        (Some(spec), _) => spec.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read TEND_MASTER_KEYS_FILE {}: {e}", path.display()))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    parse(&spec).map(Some)
}

/// The configured master keys, or for the embedded database a key kept in
/// its data directory (a development convenience: a key beside the data it
/// protects protects nothing against a copy of the directory).
pub(crate) fn or_development(
    configured: Option<MasterKeys>,
    options: &DatabaseOptions,
    database: &Database,
) -> Result<Option<MasterKeys>> {
    if configured.is_some() || database.embedded.is_none() {
        return Ok(configured);
    }
    let path = options.data_dir().join("master-keys");
    if !path.exists() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let entry = MasterKeys::generate_entry("dev")
            .map_err(|e| format!("the random source failed: {e}"))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(entry.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    tracing::warn!(path = %path.display(), "no TEND_MASTER_KEYS: using a development master key kept beside the embedded database");
    parse(std::fs::read_to_string(&path)?.trim()).map(Some)
}

fn parse(spec: &str) -> Result<MasterKeys> {
    spec.parse::<MasterKeys>()
        .map_err(|e| format!("TEND_MASTER_KEYS: {e}").into())
}
