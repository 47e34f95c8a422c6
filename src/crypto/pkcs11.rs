//! Master keys and the ledger's signing key in a PKCS#11 token (an HSM; SoftHSM2 in the
//! tests), through the `cryptoki` crate.
//!
//! Master-key version N is an AES-256 token object labelled `PREFIX-vN` (default prefix
//! `carevault-master`): `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE`, usable to encrypt and decrypt only. Its bytes never leave the token:
//! a tenant key is wrapped by `C_Encrypt` with `CKM_AES_GCM` inside the token and opened by
//! `C_Decrypt` there (tokens such as SoftHSM2 cannot wrap keys with AES-GCM, so the
//! tenant key travels as data).
//!
//! Wrapped layout: `IV (12 bytes, fresh from the system CSPRNG) | ciphertext (32) | tag
//! (16)`, authenticated with AAD `version (u32, big-endian) | caller's AAD`, so a wrapping
//! names the one master-key version and the one tenant it belongs to.
//!
//! A module is initialised once per process (PKCS#11 allows one `C_Initialize` per
//! process) and shared by every token user of this process. Sessions are pooled; the user
//! PIN logs each new session in. When a call fails as if the token went away (session
//! lost, token not present, device removed or its objects gone), the failure is
//! [`ProviderError::Unavailable`], every pooled session is dropped, and the next call
//! first re-initialises the module (at most once a second): some modules, SoftHSM2 among
//! them, only see a token that came back after `C_Finalize` and `C_Initialize`. Nothing
//! falls back to another key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::crypto::{Aad, Key, KeyProvider, ProviderError};

const IV: usize = 12;
const TAG: usize = 16;
/// Length of a wrapped 32-byte key.
const WRAPPED: usize = IV + 32 + TAG;
/// The least time between two re-initialisations of a module.
const RESET_INTERVAL: Duration = Duration::from_secs(1);
/// DER of the Ed25519 curve's object identifier (1.3.101.112), the token's `CKA_EC_PARAMS`.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// Which token of a module: a slot id, or the token's label (`label:NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChoice {
    Slot(u64),
    Label(String),
}

impl TokenChoice {
    /// A number is a slot id; `label:NAME` names the token by its label (at most 32 bytes,
    /// the field's size in PKCS#11).
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        const WANT: &str = "must be a slot id (a number) or label:TOKEN-LABEL";
        match raw.strip_prefix("label:") {
            Some(label) if !label.is_empty() && label.len() <= 32 => Ok(Self::Label(label.to_owned())),
            Some(_) => Err(WANT),
            None => raw.parse().map(Self::Slot).map_err(|_| WANT),
        }
    }
}

impl fmt::Display for TokenChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Slot(id) => write!(f, "the token in slot {id}"),
            Self::Label(label) => write!(f, "token '{label}'"),
        }
    }
}

/// Why a token could not be opened, by the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The module (shared library) did not load or initialise.
    #[error("{0}")]
    Module(String),
    /// No such token, or it did not answer.
    #[error("{0}")]
    Token(String),
    /// The PIN file is unreadable or readable by others, or the token refused the PIN.
    #[error("{0}")]
    Pin(String),
}

/// A loaded module: one per process and path.
struct Module {
    path: PathBuf,
    /// Read-locked by every call; write-locked to re-initialise, so no call is inside the
    /// module while it finalises.
    loaded: RwLock<Loaded>,
    /// A call failed as if the token went away: re-initialise before the next call.
    suspect: AtomicBool,
    last_reset: Mutex<Instant>,
    /// Counts re-initialisations; a slot found before one is looked up again.
    generation: AtomicU64,
}

struct Loaded {
    pkcs11: Pkcs11,
    /// Logged-in sessions not in use, by slot.
    idle: Mutex<Vec<(Slot, Session)>>,
}

fn initialize(pkcs11: &Pkcs11) -> Result<(), CkError> {
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The module at `path`, loaded and initialised on first use.
fn module(path: &Path) -> Result<Arc<Module>, String> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    let mut modules = MODULES.get_or_init(Default::default).lock().map_err(|_| "the module registry is poisoned".to_owned())?;
    if let Some(found) = modules.get(path) {
        return Ok(found.clone());
    }
    let pkcs11 = Pkcs11::new(path).map_err(|e| format!("cannot load PKCS#11 module {}: {e}", path.display()))?;
    initialize(&pkcs11).map_err(|e| format!("PKCS#11 module {} did not initialise: {}", path.display(), said(&e)))?;
    let loaded = Arc::new(Module {
        path: path.to_owned(),
        loaded: RwLock::new(Loaded { pkcs11, idle: Mutex::new(Vec::new()) }),
        suspect: AtomicBool::new(false),
        last_reset: Mutex::new(Instant::now()),
        generation: AtomicU64::new(0),
    });
    modules.insert(path.to_owned(), loaded.clone());
    Ok(loaded)
}

impl Module {
    /// Re-initialises the module when a call found the token gone and the last reset is
    /// a second old: pooled sessions closed, `C_Finalize`, `C_Initialize`.
    fn reset_if_suspect(&self) {
        if !self.suspect.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut last) = self.last_reset.lock() else { return };
        if last.elapsed() < RESET_INTERVAL {
            return;
        }
        *last = Instant::now();
        let Ok(loaded) = self.loaded.write() else { return };
        if !self.suspect.swap(false, Ordering::AcqRel) {
            return;
        }
        if let Ok(mut idle) = loaded.idle.lock() {
            idle.clear();
        }
        // Finalising an already broken module may fail; initialising again is what counts.
        let _ = loaded.pkcs11.clone().finalize();
        if initialize(&loaded.pkcs11).is_err() {
            self.suspect.store(true, Ordering::Release);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a call inside a session sees: the module, the token's slot and a logged-in session.
struct Ctx<'a> {
    pkcs11: &'a Pkcs11,
    slot: Slot,
    session: &'a Session,
}

/// Why a call failed.
enum Fail {
    /// The configured token is not among the module's tokens.
    NoToken(String),
    /// The token refused the PIN.
    Login(String),
    /// The token went away, or the session broke.
    Gone(CkError),
    /// The token answered and refused the operation.
    Refused(CkError),
}

/// A PKCS#11 error as `Function: CODE` (never arguments, so never a PIN or key bytes).
fn said(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function}: {rv:?}"),
        other => other.to_string(),
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoToken(why) | Self::Login(why) => f.write_str(why),
            Self::Gone(e) | Self::Refused(e) => f.write_str(&said(e)),
        }
    }
}

/// Errors that mean the token, the session or the login is gone rather than a refusal of
/// the call's arguments.
fn gone(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::SessionCount
                | RvError::UserNotLoggedIn
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized
                | RvError::GeneralError
                | RvError::FunctionFailed
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid,
            _
        )
    )
}

/// A token of a loaded module and the user PIN that opens it.
pub struct Token {
    module: Arc<Module>,
    choice: TokenChoice,
    pin: AuthPin,
    /// The slot found last, with the module generation it was found in.
    slot: Mutex<Option<(u64, Slot)>>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("module", &self.module.path).field("token", &self.choice).finish_non_exhaustive()
    }
}

/// Reads the user PIN: the file's first line. Refused if group or others may read it.
fn read_pin(path: &Path) -> Result<AuthPin, String> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(|e| format!("PIN file {shown}: {e}"))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!("PIN file {shown} is open to group or others (mode {:o}); make it 0600", mode & 0o777));
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| format!("PIN file {shown}: {e}"))?);
    let pin = text.lines().next().unwrap_or_default();
    if pin.is_empty() {
        return Err(format!("PIN file {shown} is empty"));
    }
    Ok(AuthPin::from(pin))
}

impl Token {
    /// Loads `module` (once per process), finds the token and logs in with the PIN read
    /// from `pin_file`, proving all three now so that a bad setting fails at start.
    pub fn open(module_path: &Path, choice: TokenChoice, pin_file: &Path) -> Result<Self, OpenError> {
        let pin = read_pin(pin_file).map_err(OpenError::Pin)?;
        let module = module(module_path).map_err(OpenError::Module)?;
        let token = Self { module, choice, pin, slot: Mutex::new(None) };
        match token.with_session(|ctx| ctx.pkcs11.get_token_info(ctx.slot).map(drop)) {
            Ok(()) => Ok(token),
            Err(Fail::Login(why)) => Err(OpenError::Pin(why)),
            Err(Fail::NoToken(why)) => Err(OpenError::Token(why)),
            Err(e) => Err(OpenError::Token(format!("{} did not answer: {e}", token.choice))),
        }
    }

    /// The token's label and slot, and the module, for `keys status`.
    pub fn describe(&self) -> String {
        let found = self.with_session(|ctx| Ok((ctx.slot.id(), ctx.pkcs11.get_token_info(ctx.slot)?.label().to_owned())));
        match found {
            Ok((slot, label)) => format!("PKCS#11 token '{label}' (slot {slot}, module {})", self.module.path.display()),
            Err(e) => format!("PKCS#11 {} (module {}; unavailable: {e})", self.choice, self.module.path.display()),
        }
    }

    fn find_slot(&self, pkcs11: &Pkcs11) -> Result<Slot, Fail> {
        let generation = self.module.generation.load(Ordering::Acquire);
        if let Some((g, slot)) = self.slot.lock().ok().and_then(|s| *s)
            && g == generation
        {
            return Ok(slot);
        }
        let slot = match &self.choice {
            TokenChoice::Slot(id) => {
                let slot = Slot::try_from(*id).map_err(|e| Fail::NoToken(format!("slot {id}: {e}")))?;
                pkcs11.get_token_info(slot).map_err(|e| Fail::NoToken(format!("no token in slot {id} ({})", said(&e))))?;
                slot
            }
            TokenChoice::Label(label) => {
                let slots = pkcs11.get_slots_with_token().map_err(Fail::Gone)?;
                let mut present = Vec::new();
                let mut found = None;
                for slot in slots {
                    if let Ok(info) = pkcs11.get_token_info(slot) {
                        if info.label() == label {
                            found = Some(slot);
                            break;
                        }
                        if info.token_initialized() {
                            present.push(format!("'{}'", info.label()));
                        }
                    }
                }
                found.ok_or_else(|| {
                    let present = if present.is_empty() { "none".to_owned() } else { present.join(", ") };
                    Fail::NoToken(format!("no token labelled '{label}' (tokens present: {present})"))
                })?
            }
        };
        if let Ok(mut cached) = self.slot.lock() {
            *cached = Some((generation, slot));
        }
        Ok(slot)
    }

    fn lost(&self) {
        if let Ok(mut cached) = self.slot.lock() {
            *cached = None;
        }
        self.module.suspect.store(true, Ordering::Release);
    }

    fn login(&self, session: &Session) -> Result<(), Fail> {
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(
                e @ CkError::Pkcs11(
                    RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange | RvError::PinLocked | RvError::PinExpired,
                    _,
                ),
            ) => Err(Fail::Login(format!("{} refused the PIN ({})", self.choice, said(&e)))),
            Err(e) => Err(Fail::Gone(e)),
        }
    }

    /// Runs `op` in a logged-in session of this token: a pooled one, or a new one. A call
    /// that fails as if the token went away is tried once more in a new session first:
    /// another process changing the token's objects can leave a handle stale for a moment.
    /// Failing again, the token counts as gone.
    fn with_session<T>(&self, op: impl Fn(&Ctx<'_>) -> Result<T, CkError>) -> Result<T, Fail> {
        let result = match self.attempt(&op) {
            Err(Fail::Gone(_)) => self.attempt(&op),
            other => other,
        };
        if matches!(result, Err(Fail::Gone(_) | Fail::NoToken(_))) {
            self.lost();
        }
        result
    }

    fn attempt<T>(&self, op: &impl Fn(&Ctx<'_>) -> Result<T, CkError>) -> Result<T, Fail> {
        self.module.reset_if_suspect();
        let loaded = self.module.loaded.read().map_err(|_| Fail::NoToken("the module lock is poisoned".into()))?;
        let slot = self.find_slot(&loaded.pkcs11)?;
        let pooled = loaded.idle.lock().ok().and_then(|mut idle| idle.iter().position(|(s, _)| *s == slot).map(|i| idle.swap_remove(i).1));
        let session = match pooled {
            Some(session) => session,
            None => {
                let session = loaded.pkcs11.open_rw_session(slot).map_err(Fail::Gone)?;
                self.login(&session)?;
                session
            }
        };
        match op(&Ctx { pkcs11: &loaded.pkcs11, slot, session: &session }) {
            Ok(value) => {
                if let Ok(mut idle) = loaded.idle.lock() {
                    idle.push((slot, session));
                }
                Ok(value)
            }
            Err(e) if gone(&e) => {
                drop(session);
                Err(Fail::Gone(e))
            }
            Err(e) => {
                if let Ok(mut idle) = loaded.idle.lock() {
                    idle.push((slot, session));
                }
                Err(Fail::Refused(e))
            }
        }
    }

    fn unavailable(&self, fail: Fail) -> ProviderError {
        match fail {
            Fail::Refused(e) => ProviderError::Other(format!("{}: {}", self.choice, said(&e))),
            Fail::NoToken(why) => ProviderError::Unavailable(why),
            other => ProviderError::Unavailable(format!("{}: {other}", self.choice)),
        }
    }
}

/// The one object of `class` labelled `label`, if any. Finding none is only an answer when
/// the token is still there: some modules return an empty list for a token that went away.
fn find(ctx: &Ctx<'_>, class: ObjectClass, label: &str) -> Result<Option<ObjectHandle>, CkError> {
    let found = ctx.session.find_objects(&[Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())])?;
    if found.is_empty() {
        ctx.pkcs11.get_token_info(ctx.slot)?;
    }
    Ok(found.first().copied())
}

/// Master keys in a PKCS#11 token: see the module documentation.
pub struct Pkcs11Provider {
    token: Token,
    prefix: String,
}

impl fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Provider").field("token", &self.token).field("prefix", &self.prefix).finish()
    }
}

impl Pkcs11Provider {
    /// Master keys labelled `{key_label}-v{N}` in `token`.
    pub fn new(token: Token, key_label: &str) -> Self {
        Self { token, prefix: key_label.to_owned() }
    }

    fn label(&self, version: u32) -> String {
        format!("{}-v{version}", self.prefix)
    }

    fn aad(version: u32, aad: &Aad) -> Vec<u8> {
        let mut out = version.to_be_bytes().to_vec();
        out.extend_from_slice(aad.as_bytes());
        out
    }

    fn key(&self, ctx: &Ctx<'_>, version: u32) -> Result<Option<ObjectHandle>, CkError> {
        find(ctx, ObjectClass::SECRET_KEY, &self.label(version))
    }

    fn list(&self, ctx: &Ctx<'_>) -> Result<Vec<u32>, CkError> {
        let want = format!("{}-v", self.prefix);
        let mut versions = Vec::new();
        for handle in ctx.session.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES)])? {
            // An object removed since the search, or one still being made (by another
            // thread or process) whose label cannot be read yet, is not a version to use.
            let attributes = match ctx.session.get_attributes(handle, &[AttributeType::Label]) {
                Err(e) if !gone(&e) || matches!(e, CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
                other => other?,
            };
            for attribute in attributes {
                if let Attribute::Label(label) = attribute
                    && let Some(version) = std::str::from_utf8(&label).ok().and_then(|l| l.strip_prefix(&want)).and_then(|v| v.parse().ok())
                {
                    versions.push(version);
                }
            }
        }
        if versions.is_empty() {
            ctx.pkcs11.get_token_info(ctx.slot)?;
        }
        versions.sort_unstable();
        versions.dedup();
        Ok(versions)
    }

    /// Generates master-key `version` in the token: AES-256, a token object, sensitive,
    /// never extractable, encrypt and decrypt only.
    fn generate(&self, ctx: &Ctx<'_>, version: u32) -> Result<ObjectHandle, CkError> {
        ctx.session.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Derive(false),
                Attribute::ValueLen(32.into()),
                Attribute::Label(self.label(version).into_bytes()),
                Attribute::Id(version.to_be_bytes().to_vec()),
            ],
        )
    }

    /// Adds the version after the newest (1 in an empty token). Two processes adding the
    /// same version at once: the later one finds two and takes its own back.
    fn add_version(&self, only_if_none: bool) -> Result<Option<u32>, ProviderError> {
        let added = self.token.with_session(|ctx| {
            let versions = self.list(ctx)?;
            if only_if_none && !versions.is_empty() {
                return Ok(None);
            }
            let next = versions.last().map_or(1, |v| v + 1);
            let handle = self.generate(ctx, next)?;
            let label = self.label(next);
            let same = ctx.session.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.into_bytes())])?;
            if same.len() > 1 {
                ctx.session.destroy_object(handle)?;
                return Ok(Some(Err(next)));
            }
            Ok(Some(Ok(next)))
        });
        match added.map_err(|e| self.token.unavailable(e))? {
            None => Ok(None),
            Some(Ok(version)) => Ok(Some(version)),
            Some(Err(version)) => {
                Err(ProviderError::Other(format!("another process added master-key version {version} at the same time; run it again")))
            }
        }
    }

    /// `carevault keys init`: creates version 1 when the token holds no master key of this
    /// label. Returns the version created, or `None` when one existed.
    pub fn init(&self) -> Result<Option<u32>, ProviderError> {
        self.add_version(true)
    }

    /// Whether the token's master keys are sensitive and never extractable (what
    /// `keys status` and the tests check); the answer comes from the token itself.
    pub fn keys_are_sealed(&self) -> Result<bool, ProviderError> {
        self.token
            .with_session(|ctx| {
                let mut sealed = true;
                for version in self.list(ctx)? {
                    let Some(handle) = self.key(ctx, version)? else { continue };
                    let attributes = ctx.session.get_attributes(
                        handle,
                        &[AttributeType::Sensitive, AttributeType::Extractable, AttributeType::Token, AttributeType::NeverExtractable],
                    )?;
                    sealed &= attributes.iter().all(|a| match a {
                        Attribute::Sensitive(v) | Attribute::Token(v) | Attribute::NeverExtractable(v) => *v,
                        Attribute::Extractable(v) => !*v,
                        _ => true,
                    }) && attributes.len() == 4;
                }
                Ok(sealed)
            })
            .map_err(|e| self.token.unavailable(e))
    }
}

impl KeyProvider for Pkcs11Provider {
    fn current_version(&self) -> Result<u32, ProviderError> {
        let versions = self.versions()?;
        versions.last().copied().ok_or_else(|| {
            ProviderError::Other(format!("{} holds no master key '{}' (run `carevault keys init`)", self.token.choice, self.label(1)))
        })
    }

    fn wrap(&self, version: u32, aad: &Aad, key: &Key) -> Result<Vec<u8>, ProviderError> {
        let mut iv = [0u8; IV];
        SystemRandom::new().fill(&mut iv).map_err(|_| ProviderError::Other("the system random source failed".into()))?;
        let full_aad = Self::aad(version, aad);
        let sealed = self
            .token
            .with_session(|ctx| {
                let Some(handle) = self.key(ctx, version)? else { return Ok(None) };
                let mut nonce = iv;
                let params = GcmParams::new(&mut nonce, &full_aad, (TAG as u64 * 8).into())?;
                ctx.session.encrypt(&Mechanism::AesGcm(params), handle, key.expose()).map(Some)
            })
            .map_err(|e| self.token.unavailable(e))?
            .ok_or(ProviderError::UnknownVersion(version))?;
        if sealed.len() != WRAPPED - IV {
            return Err(ProviderError::Other(format!("the token returned {} bytes for a wrapped key", sealed.len())));
        }
        let mut out = iv.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, version: u32, aad: &Aad, wrapped: &[u8]) -> Result<Key, ProviderError> {
        if wrapped.len() != WRAPPED {
            return Err(ProviderError::Unwrap(format!("a wrapped key is {WRAPPED} bytes, not {}", wrapped.len())));
        }
        let (iv, sealed) = wrapped.split_at(IV);
        let full_aad = Self::aad(version, aad);
        let opened = self
            .token
            .with_session(|ctx| {
                let Some(handle) = self.key(ctx, version)? else { return Ok(Err(ProviderError::UnknownVersion(version))) };
                let mut nonce: [u8; IV] = iv.try_into().map_err(CkError::TryFromSlice)?;
                let params = GcmParams::new(&mut nonce, &full_aad, (TAG as u64 * 8).into())?;
                match ctx.session.decrypt(&Mechanism::AesGcm(params), handle, sealed) {
                    Ok(plain) => Ok(Ok(Zeroizing::new(plain))),
                    // A failed tag is reported by some modules as a general error: it is a
                    // refusal of this ciphertext only if the token still answers for the key.
                    Err(CkError::Pkcs11(rv, cryptoki::context::Function::Decrypt)) => {
                        ctx.session.get_attributes(handle, &[AttributeType::Label])?;
                        Ok(Err(ProviderError::Unwrap(format!("the token refused the wrapped key ({rv:?})"))))
                    }
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| self.token.unavailable(e))??;
        Key::from_slice(&opened).map_err(|_| ProviderError::Unwrap("a wrapped key did not open to 32 bytes".into()))
    }

    fn versions(&self) -> Result<Vec<u32>, ProviderError> {
        self.token.with_session(|ctx| self.list(ctx)).map_err(|e| self.token.unavailable(e))
    }

    fn rotate(&self) -> Result<u32, ProviderError> {
        self.add_version(false)?.ok_or_else(|| ProviderError::Other("no version was added".into()))
    }

    fn is_development(&self) -> bool {
        false
    }

    fn location(&self) -> String {
        format!("{}, keys labelled {}-vN", self.token.describe(), self.prefix)
    }

    fn check(&self) -> Result<(), ProviderError> {
        self.current_version().map(drop)
    }
}

/// An Ed25519 key pair in the token (`CKM_EDDSA`), labelled `label`: the private half is
/// sensitive and never extractable; the public half is read once, when opened.
pub struct TokenSigningKey {
    token: Token,
    label: String,
    public: [u8; 32],
}

impl fmt::Debug for TokenSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigningKey").field("token", &self.token).field("label", &self.label).finish_non_exhaustive()
    }
}

/// The 32 key bytes of a `CKA_EC_POINT`: a DER OCTET STRING around them, or (some modules)
/// the bare bytes.
fn ed25519_point(point: &[u8]) -> Option<[u8; 32]> {
    match point {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest.try_into().ok(),
        bare if bare.len() == 32 => bare.try_into().ok(),
        _ => None,
    }
}

impl TokenSigningKey {
    fn public_key_of(token: &Token, label: &str) -> Result<Option<[u8; 32]>, ProviderError> {
        let point = token
            .with_session(|ctx| {
                let Some(handle) = find(ctx, ObjectClass::PUBLIC_KEY, label)? else { return Ok(None) };
                let found = ctx.session.get_attributes(handle, &[AttributeType::EcPoint])?;
                Ok(found.into_iter().find_map(|a| if let Attribute::EcPoint(p) = a { Some(p) } else { None }))
            })
            .map_err(|e| token.unavailable(e))?;
        point
            .map(|p| ed25519_point(&p).ok_or_else(|| ProviderError::Other(format!("key '{label}' is not an Ed25519 public key"))))
            .transpose()
    }

    /// The key pair labelled `label`; with `create`, generated in the token when it holds
    /// none. Returns the key and whether it was created.
    pub fn open(token: Token, label: &str, create: bool) -> Result<(Self, bool), ProviderError> {
        if let Some(public) = Self::public_key_of(&token, label)? {
            return Ok((Self { token, label: label.to_owned(), public }, false));
        }
        if !create {
            return Err(ProviderError::Other(format!("{} holds no Ed25519 key '{label}' (run `carevault keys init`)", token.choice)));
        }
        let id = label.as_bytes().to_vec();
        token
            .with_session(|ctx| {
                ctx.session.generate_key_pair(
                    &Mechanism::EccEdwardsKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(false),
                        Attribute::Verify(true),
                        Attribute::Encrypt(false),
                        Attribute::Wrap(false),
                        Attribute::EcParams(ED25519_OID.to_vec()),
                        Attribute::Label(label.as_bytes().to_vec()),
                        Attribute::Id(id.clone()),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Sign(true),
                        Attribute::Decrypt(false),
                        Attribute::Unwrap(false),
                        Attribute::Derive(false),
                        Attribute::Label(label.as_bytes().to_vec()),
                        Attribute::Id(id.clone()),
                    ],
                )
            })
            .map_err(|e| token.unavailable(e))?;
        let public = Self::public_key_of(&token, label)?
            .ok_or_else(|| ProviderError::Other(format!("the token did not keep the key '{label}' it generated")))?;
        Ok((Self { token, label: label.to_owned(), public }, true))
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// Where the key lives, for logs and `keys status`.
    pub fn location(&self) -> String {
        format!("{}, key '{}'", self.token.describe(), self.label)
    }

    /// A pure Ed25519 signature (RFC 8032) of `message`, made in the token.
    pub fn sign(&self, message: &[u8]) -> Result<[u8; 64], ProviderError> {
        let signature = self
            .token
            .with_session(|ctx| {
                let Some(handle) = find(ctx, ObjectClass::PRIVATE_KEY, &self.label)? else { return Ok(None) };
                ctx.session.sign(&Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)), handle, message).map(Some)
            })
            .map_err(|e| self.token.unavailable(e))?
            .ok_or_else(|| ProviderError::Unavailable(format!("{} no longer holds the key '{}'", self.token.choice, self.label)))?;
        signature.try_into().map_err(|_| ProviderError::Other("the token's signature is not 64 bytes".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_chosen_by_slot_id_or_label() {
        assert_eq!(TokenChoice::parse("17"), Ok(TokenChoice::Slot(17)));
        assert_eq!(TokenChoice::parse("label:clinic-hsm"), Ok(TokenChoice::Label("clinic-hsm".into())));
        for bad in ["", "label:", "clinic-hsm", "-1", &format!("label:{}", "x".repeat(33))] {
            assert!(TokenChoice::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(TokenChoice::parse("label:a").unwrap().to_string(), "token 'a'");
    }

    #[test]
    fn ed25519_points_come_wrapped_or_bare() {
        let key = [9u8; 32];
        let mut der = vec![0x04, 0x20];
        der.extend_from_slice(&key);
        assert_eq!(ed25519_point(&der), Some(key));
        assert_eq!(ed25519_point(&key), Some(key));
        assert_eq!(ed25519_point(&der[..20]), None);
    }

    #[test]
    fn a_pin_file_open_to_others_or_empty_is_refused_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "zz-pin-4711\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let refused = read_pin(&path).err().unwrap();
            assert!(refused.contains("0600") && !refused.contains("zz-pin"), "{refused}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let pin = read_pin(&path).unwrap();
        assert!(!format!("{pin:?}").contains("zz-pin"));
        std::fs::write(&path, "\n").unwrap();
        assert!(read_pin(&path).err().unwrap().contains("empty"));
    }
}
