//! `kuryr controller`: the Kubernetes controller (pods, namespaces, NetworkPolicies →
//! Neutron), with kuryr-kubernetes' option names where they exist.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, ArgGroup, Args};
use kuryr_client::{Client, ClientConfig, Credentials};
use kuryr_controller::owner::Owner;
use kuryr_controller::{Config, LeaseConfig, Network, PoolConfig};

/// Where pods' ports go: --pod-network, or --namespace-subnet-pool with --pod-router
/// (checked when the controller starts: --cleanup needs neither).
#[derive(Args, Clone, Debug)]
#[command(group(ArgGroup::new("pod_networking").args(["pod_network", "namespace_subnet_pool"])))]
pub struct ControllerArgs {
    /// The value of the `kuryr.k8s.cluster` tag on everything the controller makes (one
    /// Neutron can serve several clusters).
    #[arg(long, default_value = "kubernetes", env = "KURYR_CLUSTER_NAME")]
    pub cluster_name: String,

    /// One network (name or id) for every pod.
    #[arg(long, env = "KURYR_POD_NETWORK", conflicts_with_all = ["namespace_subnet_pool", "pod_router"])]
    pub pod_network: Option<String>,

    /// A network and subnet per namespace, from this subnet pool (name or id).
    #[arg(long, env = "KURYR_NAMESPACE_SUBNET_POOL", requires = "pod_router")]
    pub namespace_subnet_pool: Option<String>,

    /// The router namespace subnets are attached to (name or id).
    #[arg(long, env = "KURYR_POD_ROUTER")]
    pub pod_router: Option<String>,

    /// The subnet (name or id) whose CIDR holds the cluster's Service IPs (the
    /// apiserver's --service-cluster-ip-range, or a range that contains it): Services
    /// become load balancers with their ClusterIP as VIP there (kuryr-kubernetes'
    /// `service_subnet`). Without it, Services are left alone (run kube-proxy).
    #[arg(long, env = "KURYR_SERVICE_SUBNET")]
    pub service_subnet: Option<String>,

    /// The external network (name or id) whose floating IPs `type: LoadBalancer`
    /// Services get on their VIP (kuryr-kubernetes' `external_svc_net`).
    #[arg(long, env = "KURYR_EXTERNAL_SVC_NET", requires = "service_subnet")]
    pub external_svc_net: Option<String>,

    /// Project of the Neutron objects made (default: the credential's; another project
    /// needs an admin credential).
    #[arg(long, env = "KURYR_POD_PROJECT")]
    pub pod_project: Option<String>,

    /// Ports kept ready in each (node, network) pool.
    #[arg(long, default_value_t = 5)]
    pub ports_pool_min: usize,

    /// Most ports in a pool (0: no maximum); ports given back beyond it are deleted.
    #[arg(long, default_value_t = 0)]
    pub ports_pool_max: usize,

    /// Ports made per bulk request.
    #[arg(long, default_value_t = 10)]
    pub ports_pool_batch: usize,

    /// Seconds between pool updates (an idle pool shrinks after three).
    #[arg(long, default_value_t = 20)]
    pub ports_pool_update_frequency: u64,

    /// Seconds between full passes (Neutron listed again, objects without an owner
    /// removed, everything reconciled).
    #[arg(long, default_value_t = 300)]
    pub resync_period: u64,

    /// Reconciles at once.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,

    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    #[arg(long, env = "KURYR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Elect a leader on a coordination.k8s.io Lease: only the leader acts.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,

    #[arg(long, default_value = "kube-system")]
    pub leader_elect_namespace: String,

    #[arg(long, default_value = "kuryr-controller")]
    pub leader_elect_lease_name: String,

    /// This replica's identity (default: the host name; replicas on one host need
    /// their own).
    #[arg(long)]
    pub leader_elect_identity: Option<String>,

    /// Seconds a lease lasts without renewal before another replica takes over.
    #[arg(long, default_value_t = 15)]
    pub leader_elect_lease_duration: u64,

    /// Seconds the leader keeps acting without a successful renewal.
    #[arg(long, default_value_t = 10)]
    pub leader_elect_renew_deadline: u64,

    /// Seconds between lease reads and renewals.
    #[arg(long, default_value_t = 2)]
    pub leader_elect_retry_period: u64,

    /// Credentials from this clouds.yaml entry instead of the OS_* variables (an
    /// application credential is intended).
    #[arg(long, env = "OS_CLOUD")]
    pub os_cloud: Option<String>,

    /// PEM CA bundle that verifies Neutron's and Keystone's certificates.
    #[arg(long, env = "OS_CACERT")]
    pub os_cacert: Option<PathBuf>,

    /// Delete everything the controller made for --cluster-name (ports, groups,
    /// namespace networks) and exit.
    #[arg(long)]
    pub cleanup: bool,

    /// The Deployment this controller runs in (NAMESPACE/NAME, as kuryr's manifests
    /// install it): when it is deleted (not updated), the controller deletes everything
    /// it made (as --cleanup) before it exits, and its lease goes with the Deployment.
    #[arg(long)]
    pub owner_deployment: Option<kuryr_controller::owner::DeploymentName>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl ControllerArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let network = match (
            &self.pod_network,
            &self.namespace_subnet_pool,
            &self.pod_router,
        ) {
            (Some(n), None, _) => Network::Single(n.clone()),
            (None, Some(p), Some(r)) => Network::PerNamespace {
                subnetpool: p.clone(),
                router: r.clone(),
            },
            _ => anyhow::bail!("give --pod-network, or --namespace-subnet-pool with --pod-router"),
        };
        let identity = self.leader_elect_identity.clone().unwrap_or_else(hostname);
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Ok(Config {
            cluster: self.cluster_name.clone(),
            network,
            service_subnet: self.service_subnet.clone(),
            external_svc_net: self.external_svc_net.clone(),
            project: self.pod_project.clone(),
            pool: PoolConfig {
                min: self.ports_pool_min,
                max: self.ports_pool_max,
                batch: self.ports_pool_batch,
                update_frequency: Duration::from_secs(self.ports_pool_update_frequency),
            },
            resync_period: Duration::from_secs(self.resync_period),
            workers: self.workers,
            leader: self.leader_elect.then(|| LeaseConfig {
                namespace: self.leader_elect_namespace.clone(),
                name: self.leader_elect_lease_name.clone(),
                identity: identity.clone(),
                lease_duration: secs(self.leader_elect_lease_duration),
                renew_deadline: secs(self.leader_elect_renew_deadline),
                retry_period: secs(self.leader_elect_retry_period),
                owner: None,
            }),
            metrics_listen: self.metrics_listen,
            instance: identity,
        })
    }

    fn credentials(&self) -> anyhow::Result<Credentials> {
        let mut creds = match &self.os_cloud {
            Some(cloud) => Credentials::from_cloud(cloud)
                .with_context(|| format!("credentials of cloud {cloud:?}"))?,
            None => Credentials::from_env().context("credentials from OS_* variables")?,
        };
        if let Some(ca) = &self.os_cacert {
            creds.cacert = Some(ca.clone());
        }
        Ok(creds)
    }
}

pub(crate) async fn kube_client(path: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (give --kubeconfig)")?,
    };
    kube::Client::try_from(config).context("Kubernetes client")
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let creds = args.credentials()?;
    // No login yet: the controller waits for Neutron rather than failing at start.
    let client = Client::new(creds, ClientConfig::default())?;
    if args.cleanup {
        let r = kuryr_controller::cleanup(client, &args.cluster_name).await?;
        println!(
            "cluster {:?}: deleted {} load balancers, {} floating IPs, {} ports, {} security groups, {} subnets, {} networks",
            args.cluster_name,
            r.load_balancers,
            r.floating_ips,
            r.ports,
            r.groups,
            r.subnets,
            r.networks
        );
        return Ok(());
    }
    let mut cfg = args.config()?;
    let kube = kube_client(args.kubeconfig.as_ref()).await?;
    let owner = match &args.owner_deployment {
        Some(d) => Some(Owner::watch(kube.clone(), d.0.clone()).await?),
        None => None,
    };
    if let (Some(o), Some(lease)) = (&owner, cfg.leader.as_mut())
        && o.workload().namespace == lease.namespace
    {
        lease.owner = Some(o.reference());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    kuryr_controller::run(cfg, client.clone(), kube, stop_rx).await?;
    if let Some(o) = owner
        && o.is_gone().await
    {
        // Every replica does it: deletions are idempotent, and one replica is enough. A
        // pass that trips over the other's deletions is run again.
        tracing::info!(workload = %o.workload(), "kuryr is being removed: deleting what the controller made");
        let mut attempt = 1;
        loop {
            match kuryr_controller::cleanup(client.clone(), &args.cluster_name).await {
                Ok(r) => {
                    tracing::info!(
                        load_balancers = r.load_balancers,
                        floating_ips = r.floating_ips,
                        ports = r.ports,
                        groups = r.groups,
                        subnets = r.subnets,
                        networks = r.networks,
                        "removed"
                    );
                    break;
                }
                Err(e) if attempt < 3 => {
                    tracing::warn!(error = %e, attempt, "clean-up pass failed; running it again");
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
