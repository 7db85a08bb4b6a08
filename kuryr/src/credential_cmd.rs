//! `kuryr credential agent|plugin`: application credentials for agents and Docker
//! plugins, made with admin credentials against a running server (or a real
//! Keystone), so that no host holds an admin password.
//!
//! - `agent --host H`: role `kuryr_agent:H` (made if absent), user `kuryr-agent-H`
//!   holding it on project `service`, and an application credential of that user
//!   restricted to that role. The server's policy lets such a caller act as the agent
//!   of host H and nothing else.
//! - `plugin --host H --project P`: user `kuryr-plugin-H` with role `manager` on P, and
//!   an application credential restricted to `manager`: what the Docker plugin needs
//!   to make networks, subnets and ports in P, and to give a port it adopts (`--ip` of
//!   an existing port) Docker's MAC (neutron's `update_port:mac_address` is admin or the
//!   network owner's manager). `manager` implies `member` and `reader`.
//! - `controller --cluster C --project P`: user `kuryr-controller-C` with roles `member`
//!   and `service` on P, and an application credential restricted to both: `member`
//!   makes the pods' networks, subnets, groups and ports in P; `service` (Neutron's
//!   `service_api` rule, as Nova's and Octavia's service users hold it) sets the pool
//!   ports' `binding:host_id`. No admin: it sees and changes nothing outside P.
//!
//! Running it again replaces the credential (the previous one stops working). The
//! user gets a fresh random password that is used once, to make the credential, and
//! never written anywhere.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use kuryr_client::{
    AppCredAuth, AppCredRef, AuthMethod, Client, ClientConfig, ClientError, Credentials, Ident,
    Method, PasswordAuth,
};
use serde_json::{Value, json};

/// Name of the application credential each provisioned user holds.
const APP_CRED_NAME: &str = "kuryr";

#[derive(Subcommand)]
pub enum CredentialCommand {
    /// A host-scoped agent credential: acts as the agent of --host, nothing else.
    Agent {
        /// The host the agent runs on (its `binding:host_id`).
        #[arg(long)]
        host: String,
        /// Project the agent user's role is held on.
        #[arg(long, default_value = "service")]
        project: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// A credential for `kuryr controller` of one Kubernetes cluster: member and
    /// service on --project (where the pods' ports, networks and groups are made).
    Controller {
        /// The cluster's name (`kuryr controller --cluster-name`).
        #[arg(long, default_value = "kubernetes")]
        cluster: String,
        #[arg(long, default_value = "admin")]
        project: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The credentials of kuryr's Kubernetes manifests, as a Secret to apply: the
    /// controller's (as `controller`: cloud `kuryr-controller` in key controller.yaml)
    /// and one agent credential per --node (as `agent`: clouds `kuryr-agent-NODE` in key
    /// agents.yaml), and the CA bundle given to this command (key cacert.pem).
    Kubernetes {
        #[arg(long, default_value = "kubernetes")]
        cluster: String,
        /// Project of the controller's credential (where pods' ports are made).
        #[arg(long, default_value = "admin")]
        project: String,
        /// A node's name (its kubelet's); repeat for each node.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// Project the agent users' roles are held on.
        #[arg(long, default_value = "service")]
        agent_project: String,
        /// The Secret's namespace and name (the manifests use kube-system/kuryr-credentials).
        #[arg(long, default_value = "kube-system")]
        namespace: String,
        #[arg(long, default_value = "kuryr-credentials")]
        secret_name: String,
        /// Write the Secret here (mode 0600) instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// The credentials stop working after this many seconds (default: never).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Admin credentials from this clouds.yaml entry instead of the OS_* variables.
        #[arg(long, env = "OS_CLOUD")]
        os_cloud: Option<String>,
    },
    /// A project-member credential for the Docker plugin of --host.
    Plugin {
        #[arg(long)]
        host: String,
        /// Project the plugin's networks, subnets and ports belong to.
        #[arg(long, default_value = "admin")]
        project: String,
        #[command(flatten)]
        out: OutputArgs,
    },
}

#[derive(Args, Clone)]
pub struct OutputArgs {
    /// Write the credential here (mode 0600) instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
    /// `openrc` (OS_* variables to source) or `clouds` (a clouds.yaml).
    #[arg(long, value_enum, default_value_t = Format::Openrc)]
    format: Format,
    /// The credential stops working after this many seconds (default: never).
    #[arg(long)]
    expires_in: Option<u64>,
    /// Admin credentials from this clouds.yaml entry instead of the OS_* variables.
    #[arg(long, env = "OS_CLOUD")]
    os_cloud: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Openrc,
    Clouds,
}

/// What to provision.
pub struct Spec {
    pub user: String,
    pub project: String,
    /// The roles granted on `project` and carried by the credential.
    pub roles: Vec<String>,
    /// Make a role when it does not exist (agent roles, `service` on a new cloud).
    pub create_role: bool,
    pub description: String,
    pub expires_in: Option<u64>,
}

impl Spec {
    pub fn agent(host: &str, project: &str) -> Spec {
        Spec {
            user: format!("kuryr-agent-{host}"),
            project: project.into(),
            roles: vec![format!("{}{host}", kuryr_api::identity::AGENT_ROLE_PREFIX)],
            create_role: true,
            description: format!("kuryr agent of host {host}"),
            expires_in: None,
        }
    }

    pub fn plugin(host: &str, project: &str) -> Spec {
        Spec {
            user: format!("kuryr-plugin-{host}"),
            project: project.into(),
            roles: vec!["manager".into()],
            create_role: true,
            description: format!("kuryr Docker plugin of host {host}"),
            expires_in: None,
        }
    }

    pub fn controller(cluster: &str, project: &str) -> Spec {
        Spec {
            user: format!("kuryr-controller-{cluster}"),
            project: project.into(),
            roles: vec!["member".into(), "service".into()],
            create_role: true,
            description: format!("kuryr controller of Kubernetes cluster {cluster}"),
            expires_in: None,
        }
    }
}

/// A credential made by [`provision`].
pub struct Provisioned {
    pub auth_url: String,
    pub id: String,
    pub secret: String,
    pub region: Option<String>,
    pub interface: String,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
}

impl Provisioned {
    pub fn credentials(&self) -> Credentials {
        Credentials {
            auth: AuthMethod::ApplicationCredential(AppCredAuth {
                auth_url: self.auth_url.clone(),
                credential: AppCredRef::Id(self.id.clone()),
                secret: self.secret.clone(),
            }),
            region_name: self.region.clone(),
            interface: self.interface.clone(),
            cacert: self.cacert.clone(),
            insecure: self.insecure,
            network_endpoint: None,
        }
    }

    fn openrc(&self) -> String {
        let mut s = format!(
            "export OS_AUTH_TYPE=v3applicationcredential\n\
             export OS_AUTH_URL={}\n\
             export OS_APPLICATION_CREDENTIAL_ID={}\n\
             export OS_APPLICATION_CREDENTIAL_SECRET={}\n\
             export OS_IDENTITY_API_VERSION=3\n\
             export OS_INTERFACE={}\n",
            self.auth_url, self.id, self.secret, self.interface
        );
        if let Some(r) = &self.region {
            s.push_str(&format!("export OS_REGION_NAME={r}\n"));
        }
        if let Some(c) = &self.cacert {
            s.push_str(&format!("export OS_CACERT={}\n", c.display()));
        }
        s
    }

    fn clouds(&self, name: &str) -> String {
        format!(
            "clouds:\n{}",
            self.cloud_entry(name, self.cacert.as_deref())
        )
    }

    /// The entry `name` of a clouds.yaml (under `clouds:`), with `cacert` as given.
    fn cloud_entry(&self, name: &str, cacert: Option<&std::path::Path>) -> String {
        let mut s = format!(
            "  {name}:\n    auth_type: v3applicationcredential\n    auth:\n      \
             auth_url: {}\n      application_credential_id: {}\n      \
             application_credential_secret: {}\n    identity_api_version: 3\n    \
             interface: {}\n",
            self.auth_url, self.id, self.secret, self.interface
        );
        if let Some(r) = &self.region {
            s.push_str(&format!("    region_name: {r}\n"));
        }
        if let Some(c) = cacert {
            s.push_str(&format!("    cacert: {}\n", c.display()));
        }
        s
    }
}

/// The one object named `name` in a Keystone list (`None` if there is none).
async fn find(admin: &Client, collection: &str, name: &str) -> anyhow::Result<Option<Value>> {
    let path = format!("/{collection}?name={}", encode(name));
    let v = admin
        .identity_request(Method::GET, &path, None)
        .await
        .with_context(|| format!("listing {collection} named {name}"))?;
    let list = v[collection].as_array().cloned().unwrap_or_default();
    if list.len() > 1 {
        bail!("{} {collection} are named {name}; expected one", list.len());
    }
    Ok(list.into_iter().next())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn id_of(v: &Value, what: &str) -> anyhow::Result<String> {
    v["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{what} without an id in Keystone's answer: {v}"))
}

fn random_password() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Makes (or finds) the project, role, user and grant of `spec` with `admin`, then
/// logs in as the user and replaces its application credential.
#[tracing::instrument(skip_all, fields(user = %spec.user, roles = ?spec.roles))]
pub async fn provision(admin: &Client, spec: &Spec) -> anyhow::Result<Provisioned> {
    let creds = admin.credentials().clone();
    let auth_url = admin
        .identity_url()
        .context("provisioning needs Keystone credentials, not noauth")?;
    let project = match find(admin, "projects", &spec.project).await? {
        Some(p) => id_of(&p, "project")?,
        None => {
            let body = json!({"project": {"name": spec.project, "domain_id": "default",
                "description": "Service users (kuryr agents)"}});
            let v = admin
                .identity_request(Method::POST, "/projects", Some(body))
                .await
                .with_context(|| format!("creating project {}", spec.project))?;
            id_of(&v["project"], "project")?
        }
    };
    let mut roles = Vec::new();
    for name in &spec.roles {
        let id = match find(admin, "roles", name).await? {
            Some(r) => id_of(&r, "role")?,
            None if spec.create_role => {
                let v = admin
                    .identity_request(
                        Method::POST,
                        "/roles",
                        Some(json!({"role": {"name": name}})),
                    )
                    .await
                    .with_context(|| format!("creating role {name}"))?;
                id_of(&v["role"], "role")?
            }
            None => bail!("Keystone has no role named {name}"),
        };
        roles.push((name, id));
    }
    // The password only serves to make the credential below, then is forgotten.
    let password = random_password();
    let user = match find(admin, "users", &spec.user).await? {
        Some(u) => {
            let uid = id_of(&u, "user")?;
            admin
                .identity_request(
                    Method::PATCH,
                    &format!("/users/{uid}"),
                    Some(json!({"user": {"password": password, "enabled": true}})),
                )
                .await
                .with_context(|| format!("resetting user {}", spec.user))?;
            uid
        }
        None => {
            let body = json!({"user": {"name": spec.user, "password": password,
                "default_project_id": project, "domain_id": "default",
                "description": spec.description}});
            let v = admin
                .identity_request(Method::POST, "/users", Some(body))
                .await
                .with_context(|| format!("creating user {}", spec.user))?;
            id_of(&v["user"], "user")?
        }
    };
    for (name, role) in &roles {
        admin
            .identity_request(
                Method::PUT,
                &format!("/projects/{project}/users/{user}/roles/{role}"),
                None,
            )
            .await
            .with_context(|| format!("granting {name} to {} on {}", spec.user, spec.project))?;
    }
    let as_user = Client::new(
        Credentials {
            auth: AuthMethod::Password(PasswordAuth {
                auth_url: auth_url.clone(),
                user: Ident::Id(user.clone()),
                password,
                project: Ident::Id(project.clone()),
            }),
            network_endpoint: None,
            ..creds.clone()
        },
        ClientConfig::default(),
    )?;
    let list = as_user
        .identity_request(
            Method::GET,
            &format!("/users/{user}/application_credentials?name={APP_CRED_NAME}"),
            None,
        )
        .await
        .with_context(|| format!("logging in as {} to list its credentials", spec.user))?;
    for old in list["application_credentials"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let id = id_of(old, "application credential")?;
        match as_user
            .identity_request(
                Method::DELETE,
                &format!("/users/{user}/application_credentials/{id}"),
                None,
            )
            .await
        {
            Ok(_) | Err(ClientError::NotFound { .. }) => {}
            Err(e) => return Err(e).context("deleting the previous credential"),
        }
    }
    let mut body = json!({"application_credential": {
        "name": APP_CRED_NAME,
        "description": spec.description,
        "roles": roles.iter().map(|(_, id)| json!({"id": id})).collect::<Vec<_>>(),
        "unrestricted": false,
    }});
    if let Some(secs) = spec.expires_in {
        let at = i64::try_from(secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .and_then(|d| chrono::Utc::now().checked_add_signed(d))
            .context("--expires-in is too far in the future")?;
        body["application_credential"]["expires_at"] =
            json!(at.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
    let v = as_user
        .identity_request(
            Method::POST,
            &format!("/users/{user}/application_credentials"),
            Some(body),
        )
        .await
        .context("creating the application credential")?;
    let ac = &v["application_credential"];
    let id = id_of(ac, "application credential")?;
    let secret = ac["secret"]
        .as_str()
        .context("Keystone returned no secret for the new application credential")?
        .to_string();
    let made = Provisioned {
        auth_url,
        id,
        secret,
        region: creds.region_name.clone(),
        interface: creds.interface.clone(),
        cacert: creds.cacert.clone(),
        insecure: creds.insecure,
    };
    // Proof that it logs in (and that this client speaks the method) before handing it out.
    Client::connect(made.credentials())
        .await
        .context("logging in with the new application credential")?;
    tracing::info!(credential = %made.id, "application credential made");
    Ok(made)
}

/// Where kuryr's manifests mount the Secret (clouds.yaml is found there).
const K8S_MOUNT: &str = "/etc/openstack";

fn admin_client(os_cloud: Option<&str>) -> anyhow::Result<Client> {
    let creds = match os_cloud {
        Some(cloud) => Credentials::from_cloud(cloud)
            .with_context(|| format!("credentials of cloud {cloud:?}"))?,
        None => Credentials::from_env().context("admin credentials from OS_* variables")?,
    };
    Ok(Client::new(creds, ClientConfig::default())?)
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// `credential kubernetes`: the controller's and each node's agent credential as one
/// Secret manifest.
#[allow(clippy::too_many_arguments)]
async fn kubernetes(
    cluster: &str,
    project: &str,
    nodes: &[String],
    agent_project: &str,
    namespace: &str,
    secret_name: &str,
    expires_in: Option<u64>,
    admin: &Client,
) -> anyhow::Result<String> {
    check_name("--cluster", cluster)?;
    for n in nodes {
        check_name("--node", n)?;
    }
    let mut made = Vec::new();
    let mut spec = Spec::controller(cluster, project);
    spec.expires_in = expires_in;
    made.push((
        "kuryr-controller".to_string(),
        provision(admin, &spec).await?,
    ));
    for n in nodes {
        let mut spec = Spec::agent(n, agent_project);
        spec.expires_in = expires_in;
        made.push((format!("kuryr-agent-{n}"), provision(admin, &spec).await?));
    }
    // A CA bundle given to this command goes into the Secret beside clouds.yaml.
    let cacert = made[0].1.cacert.clone();
    let mounted = cacert
        .as_ref()
        .map(|_| PathBuf::from(format!("{K8S_MOUNT}/cacert.pem")));
    // One key per reader: the controller mounts controller.yaml, the agents agents.yaml.
    let mut controller = String::from("clouds:\n");
    let mut agents = String::from("clouds:\n");
    for (i, (name, p)) in made.iter().enumerate() {
        let out = if i == 0 { &mut controller } else { &mut agents };
        out.push_str(&p.cloud_entry(name, mounted.as_deref()));
    }
    let pem = match &cacert {
        Some(c) => std::fs::read_to_string(c)
            .with_context(|| format!("reading the CA bundle {}", c.display()))?,
        None => String::new(),
    };
    let doc = format!(
        "# kuryr's application credentials for Kubernetes cluster {cluster}: made by\n\
         # `kuryr credential kubernetes` (running it again replaces them). The controller\n\
         # mounts controller.yaml, the agents agents.yaml, each as {K8S_MOUNT}/clouds.yaml.\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret_name}\n  \
         namespace: {namespace}\n  labels:\n    app.kubernetes.io/part-of: kuryr\n\
         type: Opaque\nstringData:\n  controller.yaml: |\n{}  agents.yaml: |\n{}  \
         cacert.pem: {}",
        indent(&controller, 4),
        indent(&agents, 4),
        if pem.trim().is_empty() {
            "\"\"\n".to_string()
        } else {
            format!("|\n{}", indent(&pem, 4))
        },
    );
    Ok(doc)
}

fn emit(output: Option<&PathBuf>, text: &str, what: &str) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            crate::write_private(path, text)?;
            eprintln!("{what} written to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

pub async fn run(cmd: CredentialCommand) -> anyhow::Result<()> {
    let (mut spec, out, name) = match cmd {
        CredentialCommand::Agent { host, project, out } => {
            check_name("--host", &host)?;
            (
                Spec::agent(&host, &project),
                out,
                format!("kuryr-agent-{host}"),
            )
        }
        CredentialCommand::Controller {
            cluster,
            project,
            out,
        } => {
            check_name("--cluster", &cluster)?;
            (
                Spec::controller(&cluster, &project),
                out,
                format!("kuryr-controller-{cluster}"),
            )
        }
        CredentialCommand::Plugin { host, project, out } => {
            check_name("--host", &host)?;
            (
                Spec::plugin(&host, &project),
                out,
                format!("kuryr-plugin-{host}"),
            )
        }
        CredentialCommand::Kubernetes {
            cluster,
            project,
            nodes,
            agent_project,
            namespace,
            secret_name,
            output,
            expires_in,
            os_cloud,
        } => {
            let admin = admin_client(os_cloud.as_deref())?;
            let doc = kubernetes(
                &cluster,
                &project,
                &nodes,
                &agent_project,
                &namespace,
                &secret_name,
                expires_in,
                &admin,
            )
            .await?;
            let what = format!(
                "Secret {namespace}/{secret_name} ({} credentials)",
                nodes.len() + 1
            );
            return emit(output.as_ref(), &doc, &what);
        }
    };
    spec.expires_in = out.expires_in;
    let admin = admin_client(out.os_cloud.as_deref())?;
    let made = provision(&admin, &spec).await?;
    let text = match out.format {
        Format::Openrc => made.openrc(),
        Format::Clouds => made.clouds(&name),
    };
    emit(
        out.output.as_ref(),
        &text,
        &format!("application credential {} of user {}", made.id, spec.user),
    )
}

/// A host or cluster name usable in a role name and a user name.
fn check_name(flag: &str, host: &str) -> anyhow::Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 48
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!("{flag} {host:?}: 1 to 48 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(encode("kuryr_agent:h1"), "kuryr_agent%3Ah1");
        assert!(check_name("--host", "h1").is_ok());
        assert!(check_name("--host", "a/b").is_err());
        assert!(check_name("--cluster", "").is_err());
    }
}
