//! Master-key providers: the `KeyProvider` trait and the local key file (versioned,
//! 0600, atomic writes, re-read when another process rotates). A provider wraps and
//! unwraps tenant keys under a master-key version; callers never hold a master key, so a
//! provider whose keys cannot leave it (an HSM) implements the same trait.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{Aad, Envelope, Key};

/// One version of the master key (KEK) of the key file.
#[derive(Debug)]
struct MasterKey {
    version: u32,
    key: Key,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("master key file {0}: {1}")]
    Io(String, std::io::Error),
    #[error("master key file {0} is not valid: {1}")]
    Format(String, &'static str),
    #[error("master key version {0} is not available")]
    UnknownVersion(u32),
    /// A wrapped key did not open under the version it names (tampered, moved, or wrapped
    /// by another master key).
    #[error("a wrapped key failed to open: {0}")]
    Unwrap(String),
    /// The provider cannot be reached now (an HSM session lost, a token removed).
    #[error("the key provider is unavailable: {0}")]
    Unavailable(String),
    #[error("the key provider failed: {0}")]
    Other(String),
}

/// Where master keys live. Implementations: [`LocalKeyFile`] and the PKCS#11 provider; a
/// cloud KMS implements the same trait. Master keys never leave a provider: it wraps and
/// unwraps tenant keys itself.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The version new wrappings use: the newest. Another process may have rotated, so a
    /// provider looks again rather than trusting what it loaded.
    fn current_version(&self) -> Result<u32, ProviderError>;
    /// Wraps `key` under master-key `version`, bound to `aad`.
    fn wrap(&self, version: u32, aad: &Aad, key: &Key) -> Result<Vec<u8>, ProviderError>;
    /// Opens what [`Self::wrap`] made. An unknown version is looked up again before it is an
    /// error (another process may have rotated since this one loaded).
    fn unwrap(&self, version: u32, aad: &Aad, wrapped: &[u8]) -> Result<Key, ProviderError>;
    /// Every version, oldest first.
    fn versions(&self) -> Result<Vec<u32>, ProviderError>;
    /// Adds a version and makes it current.
    fn rotate(&self) -> Result<u32, ProviderError>;
    /// Development keys are refused in production.
    fn is_development(&self) -> bool;
    /// Where the master keys live, for `carevault keys status` (a path, a token label:
    /// never key material).
    fn location(&self) -> String;
    /// Whether the provider can be used now (readiness).
    fn check(&self) -> Result<(), ProviderError>;
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileEntry {
    version: u32,
    key: Zeroizing<String>,
    created: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    development: bool,
    versions: Vec<KeyFileEntry>,
}

/// Master keys in a local JSON file (mode 0600): base64 keys by version. Meant for
/// development, where it is created on first start and marked `"development": true`.
pub struct LocalKeyFile {
    path: PathBuf,
    development: bool,
    keys: RwLock<Vec<Arc<MasterKey>>>,
}

impl fmt::Debug for LocalKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyFile").field("path", &self.path).field("development", &self.development).finish()
    }
}

impl LocalKeyFile {
    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// Creates a new key file with one key; refuses to overwrite an existing one.
    /// `development` marks keys that production refuses.
    pub fn create(path: &Path, development: bool) -> Result<(), ProviderError> {
        if path.exists() {
            return Err(ProviderError::Io(path.display().to_string(), std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
        }
        write_file(path, &KeyFile { development, versions: vec![new_entry(1)?] })
    }

    /// Opens the file, or (when `create_development` is set and it does not exist) creates
    /// it with one development key. Returns whether it was created.
    pub fn open(path: &Path, create_development: bool) -> Result<(Self, bool), ProviderError> {
        let shown = path.display().to_string();
        let created = if path.exists() {
            false
        } else if create_development {
            Self::create(path, true)?;
            true
        } else {
            return Err(ProviderError::Io(shown, std::io::Error::from(std::io::ErrorKind::NotFound)));
        };
        let (development, keys) = read_file(path)?;
        Ok((Self { path: path.to_owned(), development, keys: RwLock::new(keys) }, created))
    }

    fn reload(&self) -> Result<(), ProviderError> {
        let (_, keys) = read_file(&self.path)?;
        *self.keys.write().map_err(|_| ProviderError::Other("key cache poisoned".into()))? = keys;
        Ok(())
    }

    fn find(&self, version: u32) -> Option<Arc<MasterKey>> {
        self.keys.read().ok()?.iter().find(|k| k.version == version).cloned()
    }
}

fn new_entry(version: u32) -> Result<KeyFileEntry, ProviderError> {
    let key = Key::generate().map_err(|e| ProviderError::Other(e.to_string()))?;
    Ok(KeyFileEntry { version, key: Zeroizing::new(STANDARD.encode(key.expose())), created: chrono::Utc::now().to_rfc3339() })
}

fn read_file(path: &Path) -> Result<(bool, Vec<Arc<MasterKey>>), ProviderError> {
    let shown = path.display().to_string();
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| ProviderError::Io(shown.clone(), e))?);
    let file: KeyFile = serde_json::from_str(&text).map_err(|_| ProviderError::Format(shown.clone(), "not the expected JSON"))?;
    let mut keys = Vec::new();
    for entry in &file.versions {
        let bytes =
            Zeroizing::new(STANDARD.decode(entry.key.as_bytes()).map_err(|_| ProviderError::Format(shown.clone(), "a key is not base64"))?);
        let key = Key::from_slice(&bytes).map_err(|_| ProviderError::Format(shown.clone(), "a key is not 32 bytes"))?;
        keys.push(Arc::new(MasterKey { version: entry.version, key }));
    }
    keys.sort_by_key(|k| k.version);
    if keys.is_empty() || keys.windows(2).any(|w| w[0].version == w[1].version) {
        return Err(ProviderError::Format(shown, "needs at least one key and unique versions"));
    }
    Ok((file.development, keys))
}

/// Writes atomically: a private temporary file, then a rename.
fn write_file(path: &Path, file: &KeyFile) -> Result<(), ProviderError> {
    let shown = path.display().to_string();
    let io = |e| ProviderError::Io(shown.clone(), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let text = Zeroizing::new(serde_json::to_string_pretty(file).map_err(|_| ProviderError::Format(shown.clone(), "cannot serialise"))?);
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut handle = options.open(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut handle, text.as_bytes()).map_err(io)?;
    handle.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl LocalKeyFile {
    /// Reads the file again first: another process may have rotated, and new wrappings
    /// must use the newest version. Only key creation and rotation ask, so this is rare.
    fn current(&self) -> Result<Arc<MasterKey>, ProviderError> {
        self.reload()?;
        self.keys
            .read()
            .map_err(|_| ProviderError::Other("key cache poisoned".into()))?
            .last()
            .cloned()
            .ok_or_else(|| ProviderError::Format(self.shown(), "holds no key"))
    }

    fn version(&self, version: u32) -> Result<Arc<MasterKey>, ProviderError> {
        if let Some(k) = self.find(version) {
            return Ok(k);
        }
        self.reload()?;
        self.find(version).ok_or(ProviderError::UnknownVersion(version))
    }
}

impl KeyProvider for LocalKeyFile {
    fn current_version(&self) -> Result<u32, ProviderError> {
        Ok(self.current()?.version)
    }

    fn wrap(&self, version: u32, aad: &Aad, key: &Key) -> Result<Vec<u8>, ProviderError> {
        let master = self.version(version)?;
        Envelope::wrap(&master.key, u64::from(version), aad, key).map_err(|e| ProviderError::Other(e.to_string()))
    }

    fn unwrap(&self, version: u32, aad: &Aad, wrapped: &[u8]) -> Result<Key, ProviderError> {
        let master = self.version(version)?;
        Envelope::unwrap_key(&master.key, u64::from(version), aad, wrapped).map_err(|e| ProviderError::Unwrap(e.to_string()))
    }

    fn versions(&self) -> Result<Vec<u32>, ProviderError> {
        self.reload()?;
        Ok(self.keys.read().map_err(|_| ProviderError::Other("key cache poisoned".into()))?.iter().map(|k| k.version).collect())
    }

    fn rotate(&self) -> Result<u32, ProviderError> {
        let text = Zeroizing::new(std::fs::read_to_string(&self.path).map_err(|e| ProviderError::Io(self.shown(), e))?);
        let mut file: KeyFile = serde_json::from_str(&text).map_err(|_| ProviderError::Format(self.shown(), "not the expected JSON"))?;
        let next = file.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        file.versions.push(new_entry(next)?);
        write_file(&self.path, &file)?;
        self.reload()?;
        Ok(next)
    }

    fn is_development(&self) -> bool {
        self.development
    }

    fn location(&self) -> String {
        format!("file {}", self.shown())
    }

    fn check(&self) -> Result<(), ProviderError> {
        self.current().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_rotates_and_sees_other_processes_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/master.json");
        assert!(LocalKeyFile::open(&path, false).is_err(), "not created unless asked");
        let (a, created) = LocalKeyFile::open(&path, true).unwrap();
        assert!(created && a.is_development());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (b, created) = LocalKeyFile::open(&path, true).unwrap();
        assert!(!created);
        assert_eq!(a.current().unwrap().key, b.current().unwrap().key);
        let aad = Aad::new("tenant-key", &["t1"]);
        let tenant_key = Key::generate().unwrap();
        let under_1 = a.wrap(1, &aad, &tenant_key).unwrap();
        assert_eq!(b.rotate().unwrap(), 2);
        // `a` loaded before the rotation: it finds version 2 by looking again, and wraps
        // new keys under it.
        assert_eq!(a.version(2).unwrap().key, b.current().unwrap().key);
        assert_eq!(a.current_version().unwrap(), 2);
        assert_eq!(a.versions().unwrap(), vec![1, 2]);
        assert!(matches!(a.version(9), Err(ProviderError::UnknownVersion(9))));
        assert!(!format!("{a:?}").contains(&STANDARD.encode(a.current().unwrap().key.expose())));
        // Wrapping goes through the provider: what one opens, the other opens; another
        // binding or another version does not.
        assert_eq!(b.unwrap(1, &aad, &under_1).unwrap(), tenant_key);
        assert!(matches!(b.unwrap(1, &Aad::new("tenant-key", &["t2"]), &under_1), Err(ProviderError::Unwrap(_))));
        assert!(matches!(b.unwrap(2, &aad, &under_1), Err(ProviderError::Unwrap(_))));
        let under_2 = b.wrap(2, &aad, &tenant_key).unwrap();
        assert_eq!(a.unwrap(2, &aad, &under_2).unwrap(), tenant_key);
        assert!(a.check().is_ok());
        assert!(a.location().contains("master.json"));
    }
}
