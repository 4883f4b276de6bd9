//! Connection limits shared by all listeners (overall and per client address), and the process's
//! file-descriptor limit, raised at start so the connection limit rather than EMFILE applies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rustix::process::{Resource, getrlimit, setrlimit};

/// Open connections, overall and per client address.
#[derive(Default)]
pub struct Connections {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One counted connection; dropping it releases its place.
pub struct ConnectionSlot {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    /// Counts a new connection from `ip`, or `None` if a limit is reached.
    pub fn try_open(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_client: usize,
    ) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_client) = &mut *open;
        let mine = per_client.entry(ip).or_insert(0);
        if *total >= max_total || *mine >= max_per_client {
            if *mine == 0 {
                per_client.remove(&ip);
            }
            return None;
        }
        *total += 1;
        *mine += 1;
        Some(ConnectionSlot {
            connections: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (total, per_client) = &mut *open;
        *total -= 1;
        if let Some(mine) = per_client.get_mut(&self.ip) {
            *mine -= 1;
            if *mine == 0 {
                per_client.remove(&self.ip);
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
            limit.current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_limited_overall_and_per_client_and_released_on_drop() {
        let connections = Arc::new(Connections::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = connections.try_open(a, 3, 2).unwrap();
        let _second = connections.try_open(a, 3, 2).unwrap();
        assert!(connections.try_open(a, 3, 2).is_none(), "per client");
        let _third = connections.try_open(b, 3, 2).unwrap();
        assert!(connections.try_open(b, 3, 2).is_none(), "overall");
        drop(first);
        assert!(connections.try_open(a, 3, 2).is_some());
    }

    #[test]
    fn the_fd_soft_limit_reaches_the_hard_limit() {
        let raised = raise_fd_limit();
        assert_eq!(getrlimit(Resource::Nofile).current, raised);
        assert_eq!(getrlimit(Resource::Nofile).maximum, raised);
    }
}
