//! A MAC address that parses Neutron's `fa:16:3e:..` form and prints it back.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}")]
pub struct BadMac(pub String);

impl MacAddr {
    pub const ZERO: MacAddr = MacAddr([0; 6]);
}

impl FromStr for MacAddr {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(|| BadMac(s.to_string()))?;
            if part.is_empty() || part.len() > 2 {
                return Err(BadMac(s.to_string()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadMac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let m: MacAddr = "FA:16:3e:00:0a:ff".parse().unwrap();
        assert_eq!(m.to_string(), "fa:16:3e:00:0a:ff");
        for bad in [
            "",
            "fa:16:3e:00:0a",
            "fa:16:3e:00:0a:ff:01",
            "fa:16:3e:00:0a:fg",
            "fa:16:3e:00:0a:123",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
