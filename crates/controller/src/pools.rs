//! Port pools: how big each (node, network) pool should be, as pure decisions.
//!
//! A pool is the set of ports tagged `kuryr.k8s.pool` (device_id "") bound to a node on a
//! network: it lives only in Neutron, and is found again by tag at start. A pool is
//! *wanted* while its node has pods of its network (in single-network mode: every node,
//! from the start), and then kept at `min` or more; taking a port below `min` refills it
//! in the background by `batch` (one bulk create); an empty pool makes a batch on the
//! spot for the pod that found it empty. Returned ports go back unless the pool is at
//! `max`. A pool that nobody takes from, returns to or refills for three update
//! periods (idle) shrinks towards its floor (`min`, or 0 when it is no longer wanted) by at most a batch a
//! step; a pool whose node or network is gone is deleted at once.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    pub min: usize,
    /// 0: no maximum.
    pub max: usize,
    pub batch: usize,
    pub update_frequency: Duration,
}

impl PoolConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch == 0 {
            return Err("--ports-pool-batch must be at least 1".into());
        }
        if self.max != 0 && self.max < self.min {
            return Err(format!(
                "--ports-pool-max ({}) is below --ports-pool-min ({})",
                self.max, self.min
            ));
        }
        if self.update_frequency.is_zero() {
            return Err("--ports-pool-update-frequency must be at least 1 second".into());
        }
        Ok(())
    }
}

/// What is known of one pool when deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFacts {
    /// Ports ready to take (not in the middle of being taken or deleted).
    pub available: usize,
    /// Its node has (or will have) pods of its network.
    pub wanted: bool,
    pub node_exists: bool,
    pub network_exists: bool,
    /// Nothing taken, returned or made for a while (see the module's documentation).
    pub idle: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolAction {
    Create(usize),
    Delete(usize),
    Nothing,
}

pub fn decide(cfg: &PoolConfig, f: &PoolFacts) -> PoolAction {
    if !f.node_exists || !f.network_exists {
        return if f.available > 0 {
            PoolAction::Delete(f.available)
        } else {
            PoolAction::Nothing
        };
    }
    let floor = if f.wanted { cfg.min } else { 0 };
    if f.available < floor {
        // At least a batch (one bulk call), enough to reach min, never beyond max.
        let mut n = cfg.batch.max(floor - f.available);
        if cfg.max != 0 {
            n = n.min(cfg.max.saturating_sub(f.available));
        }
        return if n > 0 {
            PoolAction::Create(n)
        } else {
            PoolAction::Nothing
        };
    }
    if cfg.max != 0 && f.available > cfg.max {
        return PoolAction::Delete(f.available - cfg.max);
    }
    if f.idle && f.available > floor {
        return PoolAction::Delete((f.available - floor).min(cfg.batch));
    }
    PoolAction::Nothing
}

/// How many ports to make when a pod finds its pool empty: a batch, within max, at
/// least the one it needs.
pub fn sync_batch(cfg: &PoolConfig) -> usize {
    let n = if cfg.max != 0 {
        cfg.batch.min(cfg.max)
    } else {
        cfg.batch
    };
    n.max(1)
}

/// Whether a port a pod gave back goes to its pool (else it is deleted).
pub fn keep_released(
    cfg: &PoolConfig,
    available: usize,
    node_exists: bool,
    network_exists: bool,
) -> bool {
    node_exists && network_exists && (cfg.max == 0 || available < cfg.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: usize, max: usize, batch: usize) -> PoolConfig {
        PoolConfig {
            min,
            max,
            batch,
            update_frequency: Duration::from_secs(20),
        }
    }

    fn facts(available: usize) -> PoolFacts {
        PoolFacts {
            available,
            wanted: true,
            node_exists: true,
            network_exists: true,
            idle: false,
        }
    }

    #[test]
    fn fills_to_min_by_batches() {
        let c = cfg(5, 0, 10);
        assert_eq!(decide(&c, &facts(0)), PoolAction::Create(10));
        assert_eq!(decide(&c, &facts(4)), PoolAction::Create(10));
        assert_eq!(decide(&c, &facts(5)), PoolAction::Nothing);
        // min above a batch: enough for min in one call.
        assert_eq!(decide(&cfg(25, 0, 10), &facts(3)), PoolAction::Create(22));
    }

    #[test]
    fn never_above_max() {
        let c = cfg(5, 8, 10);
        assert_eq!(decide(&c, &facts(0)), PoolAction::Create(8));
        assert_eq!(decide(&c, &facts(4)), PoolAction::Create(4));
        assert_eq!(decide(&c, &facts(12)), PoolAction::Delete(4));
        assert_eq!(sync_batch(&c), 8);
        assert_eq!(sync_batch(&cfg(0, 0, 10)), 10);
        assert!(keep_released(&c, 7, true, true));
        assert!(!keep_released(&c, 8, true, true));
        assert!(keep_released(&cfg(5, 0, 10), 1000, true, true));
    }

    #[test]
    fn shrinks_when_idle() {
        let c = cfg(5, 0, 10);
        let mut f = facts(30);
        assert_eq!(decide(&c, &f), PoolAction::Nothing, "busy: keep");
        f.idle = true;
        assert_eq!(decide(&c, &f), PoolAction::Delete(10), "a batch a step");
        f.available = 7;
        assert_eq!(decide(&c, &f), PoolAction::Delete(2));
        f.available = 5;
        assert_eq!(decide(&c, &f), PoolAction::Nothing, "at min");
        // No longer wanted (no pods of the network on the node): towards 0, when idle.
        f.wanted = false;
        assert_eq!(decide(&c, &f), PoolAction::Delete(5));
        f.idle = false;
        assert_eq!(decide(&c, &f), PoolAction::Nothing);
    }

    #[test]
    fn gone_node_or_network_empties_at_once() {
        let c = cfg(5, 0, 10);
        let mut f = facts(30);
        f.node_exists = false;
        assert_eq!(decide(&c, &f), PoolAction::Delete(30));
        assert!(!keep_released(&c, 0, false, true));
        let mut f = facts(3);
        f.network_exists = false;
        assert_eq!(decide(&c, &f), PoolAction::Delete(3));
        assert!(!keep_released(&c, 0, true, false));
        f.available = 0;
        assert_eq!(decide(&c, &f), PoolAction::Nothing);
    }

    #[test]
    fn unwanted_pools_are_not_filled() {
        let c = cfg(5, 0, 10);
        let mut f = facts(0);
        f.wanted = false;
        assert_eq!(decide(&c, &f), PoolAction::Nothing);
    }

    #[test]
    fn validation() {
        assert!(cfg(5, 0, 10).validate().is_ok());
        assert!(cfg(5, 4, 10).validate().is_err());
        assert!(cfg(5, 0, 0).validate().is_err());
        let mut c = cfg(5, 10, 10);
        c.update_frequency = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
