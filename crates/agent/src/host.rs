//! Host-wide steps: removing everything kuryr made, and the sysctls that make
//! bridged traffic go through the firewall.

use std::time::Duration;

use kuryr_dataplane::netlink::Netlink;
use kuryr_dataplane::nft::Nft;

use crate::engine::Engine;
use crate::kernel::NftFirewall;
use crate::state::{LocalState, StateFile};

use crate::AgentConfig;
use crate::error::StartError;

/// Removes everything kuryr made on this host (bridges, vxlan devices, veths, nft
/// tables) and forgets the bindings: `kuryr agent --cleanup`, for decommissioning a
/// host. Needs no server.
pub async fn cleanup(cfg: &AgentConfig) -> Result<(), StartError> {
    let mut engine = Engine::new(
        Netlink::current()?,
        NftFirewall::new(Nft::with_binary(&cfg.nft_binary)),
        cfg.underlay_ip,
        None,
        cfg.vxlan_port,
        Duration::ZERO,
    )
    .router_prefix(&cfg.router_prefix);
    engine.remove_all().await?;
    StateFile::new(&cfg.state_dir).save(&LocalState::default())?;
    Ok(())
}

/// Security groups are stateful through br_netfilter: bridged IP traffic must go
/// through the inet hooks (and conntrack) of this namespace. These sysctls are per
/// network namespace; the module may need loading first.
pub(crate) async fn enable_bridge_netfilter() -> Result<(), StartError> {
    const SYSCTLS: [&str; 2] = [
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    ];
    if !std::path::Path::new(SYSCTLS[0]).exists() {
        let status = tokio::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .await;
        if !matches!(status, Ok(s) if s.success()) {
            return Err(StartError::NoBrNetfilter);
        }
    }
    for path in SYSCTLS {
        if std::fs::read_to_string(path)
            .map(|v| v.trim() == "1")
            .unwrap_or(false)
        {
            continue;
        }
        std::fs::write(path, "1").map_err(|source| StartError::Sysctl { path, source })?;
        tracing::info!(
            sysctl = path,
            "enabled so that bridged traffic is filtered statefully"
        );
    }
    Ok(())
}
