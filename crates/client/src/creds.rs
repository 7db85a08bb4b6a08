//! Credentials the way every OpenStack tool takes them: `OS_*` environment variables or
//! a named cloud in clouds.yaml.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ClientError;

/// A Keystone domain, by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    Id(String),
    Name(String),
}

impl Default for Domain {
    /// Keystone's default domain, by name (its id is `default`).
    fn default() -> Self {
        Domain::Name("Default".to_string())
    }
}

/// A user or project: by id (globally unique), or by name within a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ident {
    Id(String),
    Name { name: String, domain: Domain },
}

/// Keystone v3 password authentication scoped to a project.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordAuth {
    /// Keystone's URL, with or without the trailing `/v3`.
    pub auth_url: String,
    pub user: Ident,
    pub password: String,
    pub project: Ident,
}

impl fmt::Debug for PasswordAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordAuth")
            .field("auth_url", &self.auth_url)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("project", &self.project)
            .finish()
    }
}

/// Which application credential: by id, or by name and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCredRef {
    Id(String),
    Name { name: String, user: Ident },
}

/// Keystone v3 application credential authentication (`v3applicationcredential`):
/// the credential's secret logs in as its user on the project it was made for.
#[derive(Clone, PartialEq, Eq)]
pub struct AppCredAuth {
    /// Keystone's URL, with or without the trailing `/v3`.
    pub auth_url: String,
    pub credential: AppCredRef,
    pub secret: String,
}

impl fmt::Debug for AppCredAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppCredAuth")
            .field("auth_url", &self.auth_url)
            .field("credential", &self.credential)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// Keystone v3 password auth; the network endpoint comes from the catalog unless
    /// [`Credentials::network_endpoint`] overrides it.
    Password(PasswordAuth),
    /// Keystone v3 application credential auth; the endpoint as for `Password`.
    ApplicationCredential(AppCredAuth),
    /// No Keystone (Neutron's and kuryr's `noauth`): requests carry `X-Project-Id`
    /// (when given) and `X-Roles: admin`; [`Credentials::network_endpoint`] is required.
    NoAuth { project_id: Option<String> },
}

impl AuthMethod {
    /// Keystone's URL, for the methods that use Keystone.
    pub fn auth_url(&self) -> Option<&str> {
        match self {
            AuthMethod::Password(p) => Some(&p.auth_url),
            AuthMethod::ApplicationCredential(a) => Some(&a.auth_url),
            AuthMethod::NoAuth { .. } => None,
        }
    }
}

/// Everything needed to reach a Neutron.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub auth: AuthMethod,
    /// Catalog region to pick the network endpoint from (any region when `None`).
    pub region_name: Option<String>,
    /// Catalog interface: `public` (default), `internal` or `admin`.
    pub interface: String,
    /// A PEM CA bundle, then the only CAs trusted (OS_CACERT / `cacert`; else the system roots).
    pub cacert: Option<PathBuf>,
    /// Skip TLS certificate verification (OS_INSECURE=true / `verify: false`).
    pub insecure: bool,
    /// Neutron's root URL (with or without `/v2.0`), bypassing the catalog: required
    /// for noauth (OS_ENDPOINT / OS_NETWORK_ENDPOINT / `network_endpoint_override`).
    pub network_endpoint: Option<String>,
}

impl Credentials {
    /// noauth credentials for a Neutron (or kuryr server) at `endpoint`.
    pub fn noauth(endpoint: impl Into<String>, project_id: Option<String>) -> Self {
        Credentials {
            auth: AuthMethod::NoAuth { project_id },
            region_name: None,
            interface: "public".to_string(),
            cacert: None,
            insecure: false,
            network_endpoint: Some(endpoint.into()),
        }
    }

    /// Reads the process environment; see [`Credentials::from_vars`].
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads `OS_*` variables through `var` (empty values count as unset).
    ///
    /// If `OS_CLOUD` is set, the named clouds.yaml entry is used instead (see
    /// [`Credentials::from_cloud_with`]), with `OS_PASSWORD` filling in a password the
    /// entry leaves out. Otherwise `OS_AUTH_TYPE` selects `password` (also `v3password`;
    /// the default when OS_AUTH_URL is set), `v3applicationcredential` (also
    /// `applicationcredential`: OS_APPLICATION_CREDENTIAL_ID, or
    /// OS_APPLICATION_CREDENTIAL_NAME with OS_USERNAME / OS_USER_ID, and
    /// OS_APPLICATION_CREDENTIAL_SECRET) or `noauth` / `none` (the default when only
    /// OS_ENDPOINT or OS_NETWORK_ENDPOINT is set).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ClientError> {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(cloud) = get("OS_CLOUD") {
            return Self::from_cloud_with(&cloud, &var);
        }
        let endpoint = get("OS_NETWORK_ENDPOINT").or_else(|| get("OS_ENDPOINT"));
        let auth_type = match get("OS_AUTH_TYPE") {
            Some(t) => t,
            None if get("OS_AUTH_URL").is_none() && endpoint.is_some() => "noauth".to_string(),
            None => "password".to_string(),
        };
        let region_name = get("OS_REGION_NAME");
        let interface =
            normalize_interface(get("OS_INTERFACE").or_else(|| get("OS_ENDPOINT_TYPE")));
        let cacert = get("OS_CACERT").map(PathBuf::from);
        let insecure = get("OS_INSECURE").is_some_and(|v| is_true(&v));
        let auth = match auth_kind(&auth_type)? {
            AuthKind::NoAuth => {
                if endpoint.is_none() {
                    return Err(ClientError::Config(format!(
                        "OS_AUTH_TYPE={auth_type} needs OS_ENDPOINT or OS_NETWORK_ENDPOINT \
                         (Neutron's URL, e.g. http://127.0.0.1:9696)"
                    )));
                }
                AuthMethod::NoAuth {
                    project_id: get("OS_PROJECT_ID").or_else(|| get("OS_TENANT_ID")),
                }
            }
            kind @ (AuthKind::Password | AuthKind::AppCred) => {
                let fields = AuthFields {
                    auth_url: get("OS_AUTH_URL"),
                    username: get("OS_USERNAME"),
                    user_id: get("OS_USER_ID"),
                    password: get("OS_PASSWORD"),
                    project_name: get("OS_PROJECT_NAME").or_else(|| get("OS_TENANT_NAME")),
                    project_id: get("OS_PROJECT_ID").or_else(|| get("OS_TENANT_ID")),
                    user_domain_name: get("OS_USER_DOMAIN_NAME"),
                    user_domain_id: get("OS_USER_DOMAIN_ID"),
                    project_domain_name: get("OS_PROJECT_DOMAIN_NAME"),
                    project_domain_id: get("OS_PROJECT_DOMAIN_ID"),
                    default_domain_name: None,
                    default_domain_id: get("OS_DEFAULT_DOMAIN")
                        .or_else(|| get("OS_DEFAULT_DOMAIN_ID")),
                    endpoint: None,
                    application_credential_id: get("OS_APPLICATION_CREDENTIAL_ID"),
                    application_credential_name: get("OS_APPLICATION_CREDENTIAL_NAME"),
                    application_credential_secret: get("OS_APPLICATION_CREDENTIAL_SECRET"),
                };
                if matches!(kind, AuthKind::AppCred) {
                    AuthMethod::ApplicationCredential(
                        fields.app_cred_auth(&ENV_NAMES, "the environment")?,
                    )
                } else {
                    AuthMethod::Password(fields.password_auth(&ENV_NAMES, "the environment")?)
                }
            }
        };
        Ok(Credentials {
            auth,
            region_name,
            interface,
            cacert,
            insecure,
            network_endpoint: endpoint,
        })
    }

    /// The named cloud from the first clouds.yaml found (see [`clouds_yaml_paths`]),
    /// merged with the same cloud in secure.yaml if there is one.
    pub fn from_cloud(name: &str) -> Result<Self, ClientError> {
        Self::from_cloud_with(name, |k| std::env::var(k).ok())
    }

    /// [`Credentials::from_cloud`] with the environment read through `var`
    /// (`OS_CLIENT_CONFIG_FILE`, `OS_CLIENT_SECURE_FILE`, `HOME`, `OS_PASSWORD`).
    pub fn from_cloud_with(
        name: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ClientError> {
        let candidates = clouds_yaml_paths(&var);
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(ClientError::Config(format!(
                "cloud {name:?} requested but no clouds.yaml found (looked in {})",
                join_paths(&candidates)
            )));
        };
        let secure = secure_yaml_paths(&var).into_iter().find(|p| p.is_file());
        let mut creds = Self::from_clouds_yaml(path, secure.as_deref(), name)?;
        if let AuthMethod::Password(p) = &mut creds.auth
            && p.password.is_empty()
        {
            match var("OS_PASSWORD").filter(|v| !v.is_empty()) {
                Some(pw) => p.password = pw,
                None => {
                    return Err(ClientError::Config(format!(
                        "cloud {name:?} in {} has no auth.password (and OS_PASSWORD is not set)",
                        path.display()
                    )));
                }
            }
        }
        Ok(creds)
    }

    /// The cloud `name` from the clouds.yaml at `path`, merged with the same cloud of
    /// `secure` (a secure.yaml) when given. A password may be left empty here (the
    /// caller fills it in); everything else that is missing is an error.
    pub fn from_clouds_yaml(
        path: &Path,
        secure: Option<&Path>,
        name: &str,
    ) -> Result<Self, ClientError> {
        let mut doc = read_yaml(path)?;
        if let Some(secure) = secure {
            let sec = read_yaml(secure)?;
            if let Some(entry) = cloud_entry(&sec, name) {
                let entry = entry.clone();
                if let Some(clouds) = doc
                    .as_mapping_mut()
                    .and_then(|m| m.get_mut("clouds"))
                    .and_then(|c| c.as_mapping_mut())
                {
                    match clouds.get_mut(name) {
                        Some(existing) => merge_yaml(existing, entry),
                        None => {
                            clouds.insert(serde_norway::Value::String(name.to_string()), entry);
                        }
                    }
                }
            }
        }
        let Some(entry) = cloud_entry(&doc, name) else {
            let known: Vec<String> = doc
                .get("clouds")
                .and_then(|c| c.as_mapping())
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            return Err(ClientError::Config(format!(
                "no cloud {name:?} in {} (clouds there: {})",
                path.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        let cloud: CloudEntry = serde_norway::from_value(entry.clone()).map_err(|e| {
            ClientError::Config(format!("cloud {name:?} in {}: {e}", path.display()))
        })?;
        let where_ = format!("cloud {name:?} in {}", path.display());
        let auth_type = cloud.auth_type.clone().unwrap_or_else(|| {
            if cloud.auth.auth_url.is_none()
                && (cloud.auth.endpoint.is_some() || cloud.network_endpoint_override.is_some())
            {
                "none".to_string()
            } else {
                "password".to_string()
            }
        });
        let network_endpoint = cloud
            .network_endpoint_override
            .clone()
            .or_else(|| cloud.auth.endpoint.clone());
        let auth = match auth_kind(&auth_type)? {
            AuthKind::NoAuth => {
                if network_endpoint.is_none() {
                    return Err(ClientError::Config(format!(
                        "{where_}: auth_type {auth_type} needs auth.endpoint or \
                         network_endpoint_override (Neutron's URL)"
                    )));
                }
                AuthMethod::NoAuth {
                    project_id: cloud.auth.project_id.clone(),
                }
            }
            AuthKind::Password => {
                let mut fields = cloud.auth.clone();
                fields.endpoint = None;
                // A password left out here may come from OS_PASSWORD (from_cloud_with).
                if fields.password.is_none() {
                    fields.password = Some(String::new());
                }
                AuthMethod::Password(fields.password_auth(&YAML_NAMES, &where_)?)
            }
            AuthKind::AppCred => {
                let mut fields = cloud.auth.clone();
                fields.endpoint = None;
                AuthMethod::ApplicationCredential(fields.app_cred_auth(&YAML_NAMES, &where_)?)
            }
        };
        let verify = cloud.verify.unwrap_or(true);
        Ok(Credentials {
            auth,
            region_name: cloud.region_name.filter(|r| !r.is_empty()),
            interface: normalize_interface(cloud.interface.or(cloud.endpoint_type)),
            cacert: cloud.cacert.filter(|c| !c.is_empty()).map(PathBuf::from),
            insecure: !verify || cloud.insecure.unwrap_or(false),
            network_endpoint,
        })
    }
}

/// Where clouds.yaml is looked for, in order (like openstacksdk):
/// `$OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`, `~/.config/openstack/clouds.yaml`,
/// `/etc/openstack/clouds.yaml`.
pub fn clouds_yaml_paths(var: impl Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    config_paths(&var, "OS_CLIENT_CONFIG_FILE", "clouds.yaml")
}

fn secure_yaml_paths(var: impl Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    config_paths(&var, "OS_CLIENT_SECURE_FILE", "secure.yaml")
}

fn config_paths(
    var: &impl Fn(&str) -> Option<String>,
    override_var: &str,
    file: &str,
) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(p) = var(override_var).filter(|v| !v.is_empty()) {
        paths.push(PathBuf::from(p));
    }
    if let Ok(cwd) = std::env::current_dir() {
        paths.push(cwd.join(file));
    }
    let config_home = var("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            var("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        });
    if let Some(dir) = config_home {
        paths.push(dir.join("openstack").join(file));
    }
    paths.push(PathBuf::from("/etc/openstack").join(file));
    paths
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_yaml(path: &Path) -> Result<serde_norway::Value, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))?;
    serde_norway::from_str(&text)
        .map_err(|e| ClientError::Config(format!("{} is not valid YAML: {e}", path.display())))
}

fn cloud_entry<'a>(doc: &'a serde_norway::Value, name: &str) -> Option<&'a serde_norway::Value> {
    doc.get("clouds")?.get(name)
}

/// Deep merge: mappings merge key by key, anything else in `over` replaces `base`.
fn merge_yaml(base: &mut serde_norway::Value, over: serde_norway::Value) {
    match (base, over) {
        (serde_norway::Value::Mapping(b), serde_norway::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_yaml(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// `publicURL` (the v2 catalog spelling) → `public`; unset → `public`.
fn normalize_interface(v: Option<String>) -> String {
    let v = v.unwrap_or_else(|| "public".to_string());
    let v = v.trim().to_ascii_lowercase();
    v.strip_suffix("url").unwrap_or(&v).to_string()
}

enum AuthKind {
    Password,
    AppCred,
    NoAuth,
}

fn auth_kind(t: &str) -> Result<AuthKind, ClientError> {
    match t.to_ascii_lowercase().as_str() {
        "password" | "v3password" => Ok(AuthKind::Password),
        "v3applicationcredential" | "applicationcredential" => Ok(AuthKind::AppCred),
        "noauth" | "none" => Ok(AuthKind::NoAuth),
        other => Err(ClientError::Config(format!(
            "unsupported auth type {other:?} (supported: password, v3password, \
             v3applicationcredential, noauth, none)"
        ))),
    }
}

/// What each source calls a field, for error messages.
struct FieldNames {
    auth_url: &'static str,
    user: &'static str,
    password: &'static str,
    project: &'static str,
    app_cred: &'static str,
    app_cred_secret: &'static str,
}

const ENV_NAMES: FieldNames = FieldNames {
    auth_url: "OS_AUTH_URL",
    user: "OS_USERNAME or OS_USER_ID",
    password: "OS_PASSWORD",
    project: "OS_PROJECT_NAME or OS_PROJECT_ID (or OS_TENANT_NAME)",
    app_cred: "OS_APPLICATION_CREDENTIAL_ID or OS_APPLICATION_CREDENTIAL_NAME",
    app_cred_secret: "OS_APPLICATION_CREDENTIAL_SECRET",
};

const YAML_NAMES: FieldNames = FieldNames {
    auth_url: "auth.auth_url",
    user: "auth.username or auth.user_id",
    password: "auth.password",
    project: "auth.project_name or auth.project_id",
    app_cred: "auth.application_credential_id or auth.application_credential_name",
    app_cred_secret: "auth.application_credential_secret",
};

/// The `auth:` mapping of a clouds.yaml entry; also what the environment is read into.
#[derive(Debug, Clone, Default, Deserialize)]
struct AuthFields {
    auth_url: Option<String>,
    username: Option<String>,
    user_id: Option<String>,
    password: Option<String>,
    #[serde(alias = "tenant_name")]
    project_name: Option<String>,
    #[serde(alias = "tenant_id")]
    project_id: Option<String>,
    user_domain_name: Option<String>,
    user_domain_id: Option<String>,
    project_domain_name: Option<String>,
    project_domain_id: Option<String>,
    /// openstacksdk's `domain_name` / `domain_id` default both user and project domain.
    #[serde(rename = "domain_name")]
    default_domain_name: Option<String>,
    #[serde(rename = "domain_id")]
    default_domain_id: Option<String>,
    /// noauth: Neutron's URL.
    endpoint: Option<String>,
    application_credential_id: Option<String>,
    application_credential_name: Option<String>,
    application_credential_secret: Option<String>,
}

impl AuthFields {
    fn app_cred_auth(self, names: &FieldNames, source: &str) -> Result<AppCredAuth, ClientError> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let mut missing = Vec::new();
        let auth_url = nonempty(self.auth_url);
        if auth_url.is_none() {
            missing.push(names.auth_url);
        }
        let secret = nonempty(self.application_credential_secret);
        if secret.is_none() {
            missing.push(names.app_cred_secret);
        }
        let domain = nonempty(self.user_domain_id)
            .map(Domain::Id)
            .or_else(|| nonempty(self.user_domain_name).map(Domain::Name))
            .or_else(|| nonempty(self.default_domain_id).map(Domain::Id))
            .or_else(|| nonempty(self.default_domain_name).map(Domain::Name))
            .unwrap_or_default();
        let credential = match (
            nonempty(self.application_credential_id),
            nonempty(self.application_credential_name),
        ) {
            (Some(id), _) => Some(AppCredRef::Id(id)),
            // A name is only unique per user: the user must be named too.
            (None, Some(name)) => match (nonempty(self.user_id), nonempty(self.username)) {
                (Some(id), _) => Some(AppCredRef::Name {
                    name,
                    user: Ident::Id(id),
                }),
                (None, Some(user)) => Some(AppCredRef::Name {
                    name,
                    user: Ident::Name { name: user, domain },
                }),
                (None, None) => {
                    missing.push(names.user);
                    None
                }
            },
            (None, None) => {
                missing.push(names.app_cred);
                None
            }
        };
        match (auth_url, credential, secret) {
            (Some(auth_url), Some(credential), Some(secret)) if missing.is_empty() => {
                Ok(AppCredAuth {
                    auth_url,
                    credential,
                    secret,
                })
            }
            _ => Err(ClientError::Config(format!(
                "application credential authentication needs {} (missing from {source})",
                missing.join(", ")
            ))),
        }
    }

    fn password_auth(self, names: &FieldNames, source: &str) -> Result<PasswordAuth, ClientError> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let mut missing = Vec::new();
        let auth_url = nonempty(self.auth_url);
        if auth_url.is_none() {
            missing.push(names.auth_url);
        }
        let password = self.password;
        if password.is_none() {
            missing.push(names.password);
        }
        let default_domain = nonempty(self.default_domain_id)
            .map(Domain::Id)
            .or_else(|| nonempty(self.default_domain_name).map(Domain::Name))
            .unwrap_or_default();
        let domain = |id: Option<String>, name: Option<String>| {
            nonempty(id)
                .map(Domain::Id)
                .or_else(|| nonempty(name).map(Domain::Name))
                .unwrap_or_else(|| default_domain.clone())
        };
        let user = match (nonempty(self.user_id), nonempty(self.username)) {
            (Some(id), _) => Some(Ident::Id(id)),
            (None, Some(name)) => Some(Ident::Name {
                name,
                domain: domain(self.user_domain_id, self.user_domain_name),
            }),
            (None, None) => {
                missing.push(names.user);
                None
            }
        };
        let project = match (nonempty(self.project_id), nonempty(self.project_name)) {
            (Some(id), _) => Some(Ident::Id(id)),
            (None, Some(name)) => Some(Ident::Name {
                name,
                domain: domain(self.project_domain_id, self.project_domain_name),
            }),
            (None, None) => {
                missing.push(names.project);
                None
            }
        };
        match (auth_url, user, password, project) {
            (Some(auth_url), Some(user), Some(password), Some(project)) if missing.is_empty() => {
                Ok(PasswordAuth {
                    auth_url,
                    user,
                    password,
                    project,
                })
            }
            _ => Err(ClientError::Config(format!(
                "password authentication needs {} (missing from {source})",
                missing.join(", ")
            ))),
        }
    }
}

/// One entry under `clouds:`.
#[derive(Debug, Clone, Default, Deserialize)]
struct CloudEntry {
    auth_type: Option<String>,
    #[serde(default)]
    auth: AuthFields,
    region_name: Option<String>,
    interface: Option<String>,
    endpoint_type: Option<String>,
    cacert: Option<String>,
    verify: Option<bool>,
    insecure: Option<bool>,
    network_endpoint_override: Option<String>,
}
