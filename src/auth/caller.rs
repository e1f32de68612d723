//! Who is calling and what they may do: [`Permission`]s, sets of them, and the [`Caller`] a
//! validated token gives, with its checks. Plain data: the axum extractor that produces a
//! `Caller` from a request is `api::caller`.

use std::sync::Arc;

use edrgate_adapter::{CommandClass, CommandKind};

use super::Refusal;
use crate::config::ScopeNames;

/// What a caller may do. Each is granted by one scope (`auth.scopes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read commands (process list, directory list, registry reads, get file) and reading the
    /// tenant's actions, devices and capabilities.
    Read,
    /// Commands that change the endpoint (kill, delete, put file, registry writes).
    Write,
    /// Execute, run script, memory dump.
    Execute,
    /// Isolate and release.
    Contain,
    /// Stored files: upload, metadata, download.
    Files,
    /// Tenant administration: the whole tenant's audit trail.
    Admin,
    /// Operating the gateway itself: the configuration reload (`POST /v1/admin/reload`),
    /// which acts on every tenant. Its own scope, never implied by a tenant's permissions
    /// (not in [`Permission::ALL`], so not in development tokens unless asked for).
    Operator,
}

impl Permission {
    /// A tenant's permissions: what every default token carries.
    pub const ALL: [Permission; 6] = [
        Permission::Read,
        Permission::Write,
        Permission::Execute,
        Permission::Contain,
        Permission::Files,
        Permission::Admin,
    ];

    /// Every permission: the tenant's and [`Permission::Operator`].
    pub const EVERY: [Permission; 7] = [
        Permission::Read,
        Permission::Write,
        Permission::Execute,
        Permission::Contain,
        Permission::Files,
        Permission::Admin,
        Permission::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Execute => "execute",
            Permission::Contain => "contain",
            Permission::Files => "files",
            Permission::Admin => "admin",
            Permission::Operator => "operator",
        }
    }

    /// The scope that grants this permission.
    pub fn scope(self, names: &ScopeNames) -> &str {
        match self {
            Permission::Read => &names.read,
            Permission::Write => &names.write,
            Permission::Execute => &names.execute,
            Permission::Contain => &names.contain,
            Permission::Files => &names.files,
            Permission::Admin => &names.admin,
            Permission::Operator => &names.operator,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl From<CommandClass> for Permission {
    fn from(class: CommandClass) -> Permission {
        match class {
            CommandClass::Read => Permission::Read,
            CommandClass::Write => Permission::Write,
            CommandClass::Execute => Permission::Execute,
            CommandClass::Contain => Permission::Contain,
        }
    }
}

/// A set of [`Permission`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    /// A tenant's permissions ([`Permission::ALL`]; not [`Permission::Operator`]).
    pub fn all() -> Permissions {
        Permission::ALL.into_iter().collect()
    }

    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::EVERY.into_iter().filter(move |p| self.contains(*p))
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Permissions {
        Permissions(iter.into_iter().fold(0, |bits, p| bits | p.bit()))
    }
}

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(Permission::as_str)).finish()
    }
}

/// Who is calling: the authenticated tenant, subject, client and permissions. Extracting it
/// enforces authentication and the tenant's request rate, so every `/v1` handler takes one;
/// the handler then asks for what it needs with [`Caller::require`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    /// `sub`: the user or service the token was issued to.
    pub subject: Option<String>,
    /// The OAuth client the token was issued through: `client_id` (RFC 9068), else `azp`,
    /// else `appid` (Entra ID v1 tokens).
    pub client_id: Option<String>,
    pub permissions: Permissions,
    pub(super) scopes: Arc<ScopeNames>,
}

impl Caller {
    /// A caller built by other means than a token (tests, internal jobs).
    pub fn new(tenant: &str, subject: Option<&str>, permissions: Permissions) -> Caller {
        Caller {
            tenant: tenant.to_owned(),
            subject: subject.map(str::to_owned),
            client_id: None,
            permissions,
            scopes: Arc::new(ScopeNames::default()),
        }
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(permission)
    }

    /// `Ok` when the caller holds `permission`, else the refusal to answer (`403 forbidden`),
    /// naming the permission and the scope that grants it.
    pub fn require(&self, permission: Permission) -> Result<(), Refusal> {
        self.require_all([permission])
    }

    /// `Ok` when the caller holds every one of `permissions`; the refusal names each missing
    /// one.
    pub fn require_all(
        &self,
        permissions: impl IntoIterator<Item = Permission>,
    ) -> Result<(), Refusal> {
        let missing: Permissions =
            permissions.into_iter().filter(|p| !self.permissions.contains(*p)).collect();
        if missing == Permissions::default() {
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(Permission::as_str).collect();
        let scopes: Vec<&str> = missing.iter().map(|p| p.scope(&self.scopes)).collect();
        let (noun, scope_noun) =
            if names.len() == 1 { ("permission", "scope") } else { ("permissions", "scopes") };
        Err(Refusal::Forbidden {
            detail: format!(
                "missing {noun} {} (token {scope_noun} {})",
                names.join(", "),
                scopes.join(", ")
            ),
            scopes: scopes.into_iter().map(str::to_owned).collect(),
        })
    }

    /// `Ok` when the caller may run every one of `commands` (the permission of each class).
    pub fn require_commands(
        &self,
        commands: impl IntoIterator<Item = CommandKind>,
    ) -> Result<(), Refusal> {
        self.require_all(commands.into_iter().map(|kind| Permission::from(kind.class())))
    }
}
