//! Host-local address management: one lease file per address under the data directory,
//! created exclusively (two concurrent ADDs never get the same address), removed on DEL.
//! Leases survive restarts; a lease names the container that holds it.

use super::CniError;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// An IPv4 subnet such as `10.42.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (ip, len) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR such as 10.42.0.0/24"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = len.parse().ok().filter(|p| (8..=30).contains(p)).ok_or_else(|| format!("prefix {len:?} must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet { network: Ipv4Addr::from(u32::from(ip) & mask), prefix })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    /// The first host address: the bridge's address and the pods' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    /// Addresses handed to pods: after the gateway, before broadcast.
    fn pool(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

/// The lease store of one network.
pub struct Leases {
    dir: PathBuf,
}

impl Leases {
    pub fn new(data_dir: &Path, network: &str) -> Result<Leases, CniError> {
        let dir = data_dir.join(network);
        std::fs::create_dir_all(&dir).map_err(|e| CniError::plugin(format!("{}: {e}", dir.display())))?;
        Ok(Leases { dir })
    }

    /// The address held by `container`, if any.
    pub fn find(&self, container: &str) -> Option<Ipv4Addr> {
        std::fs::read_dir(&self.dir).ok()?.flatten().find_map(|e| {
            let holder = std::fs::read_to_string(e.path()).ok()?;
            (holder.lines().next() == Some(container)).then(|| e.file_name().to_str()?.parse().ok())?
        })
    }

    /// Leases an address to `container` (its existing one if it has one).
    pub fn allocate(&self, subnet: &Subnet, container: &str) -> Result<Ipv4Addr, CniError> {
        if let Some(ip) = self.find(container) {
            return Ok(ip);
        }
        // Start after the last address handed out, so freed addresses are not reused at once.
        let last: Option<Ipv4Addr> = std::fs::read_to_string(self.dir.join("last")).ok().and_then(|s| s.trim().parse().ok());
        let pool: Vec<Ipv4Addr> = subnet.pool().collect();
        let start = last.and_then(|l| pool.iter().position(|p| *p == l)).map(|i| i + 1).unwrap_or(0);
        for ip in pool.iter().cycle().skip(start).take(pool.len()) {
            let path = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(container.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| CniError::plugin(format!("{}: {e}", path.display())))?;
                    let _ = std::fs::write(self.dir.join("last"), ip.to_string());
                    return Ok(*ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CniError::plugin(format!("{}: {e}", path.display()))),
            }
        }
        Err(CniError::new(11, format!("no free address left in {subnet}"), ""))
    }

    /// Frees whatever `container` holds; freeing nothing is fine.
    pub fn release(&self, container: &str) {
        while let Some(ip) = self.find(container) {
            if std::fs::remove_file(self.dir.join(ip.to_string())).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s: Subnet = "10.42.0.7/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.42.0.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        assert!(s.contains(Ipv4Addr::new(10, 42, 0, 200)));
        assert!(!s.contains(Ipv4Addr::new(10, 42, 1, 1)));
        assert!("10.42.0.0".parse::<Subnet>().is_err());
        assert!("10.42.0.0/31".parse::<Subnet>().is_err());
    }

    #[test]
    fn leases_are_exclusive_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let s: Subnet = "10.9.0.0/29".parse().unwrap(); // pool .2 - .6
        let l = Leases::new(dir.path(), "net").unwrap();
        let a = l.allocate(&s, "a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(l.allocate(&s, "a").unwrap(), a, "same container, same address");
        let others: Vec<Ipv4Addr> = ["b", "c", "d", "e"].iter().map(|c| l.allocate(&s, c).unwrap()).collect();
        assert_eq!(others.len(), 4);
        assert!(l.allocate(&s, "f").is_err(), "pool exhausted");
        l.release("c");
        assert!(l.find("c").is_none());
        let f = l.allocate(&s, "f").unwrap();
        assert_eq!(f, others[1], "the freed address is reused once the pool wraps");
        // Leases survive a new store on the same directory.
        assert_eq!(Leases::new(dir.path(), "net").unwrap().find("a"), Some(a));
    }
}
