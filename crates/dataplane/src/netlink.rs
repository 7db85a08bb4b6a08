//! Async rtnetlink for the kuryr agent: links (bridge, vxlan, veth born in a target
//! namespace), addresses, routes, FDB and neighbour entries, read back for convergence.
//!
//! A [`Netlink`] is one NETLINK_ROUTE socket bound to the namespace it was created
//! in ([`Netlink::current`] or [`Netlink::in_namespace`]); every request then acts
//! there, whatever thread or namespace the caller is in later. Messages are built
//! with `netlink-packet-route` and sent through an `rtnetlink::Handle`; the
//! connection task runs on the caller's tokio runtime and is aborted when the last
//! clone of the `Netlink` is dropped.
//!
//! Deviations from the first sketch of this API:
//! - [`VxlanInfo`] has an extra `underlay: Option<u32>` (IFLA_VXLAN_LINK); a vxlan
//!   whose underlay differs from [`VxlanSpec::underlay`] is recreated as well.
//! - [`Netlink::delete_address`] treats a missing address as success, like the other
//!   deletes.
//! - [`Netlink::neighbours`] skips NOARP entries (the kernel's own multicast and
//!   broadcast entries) and entries without a link-layer address.
//! - [`Netlink::configure_interface`] never removes IPv6 link-local (fe80::/10)
//!   addresses: the kernel's own, needed by NDP.
//! - Additions: [`NetlinkError::errno`] and [`NetlinkError::is_exists`] (EEXIST from
//!   [`Netlink::create_veth`]), `NetNs::try_clone`; [`VethSpec`] is `Clone` but not
//!   `PartialEq` (it borrows a `NetNs`).
//! - For published ports (gateway addresses on bridges): [`Netlink::all_addresses`]
//!   (one dump, with IFA_PROTO), [`Netlink::add_address_with_protocol`] and
//!   [`Netlink::set_mac`].
//! - [`VxlanSpec::port`] must be the real port (e.g. 4789), not 0: the kernel reports
//!   its default for 0, which would never match and recreate the device each time.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, NlasIterator,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;

use crate::MacAddr;
use crate::netns::{self, NetNs, NetnsError};

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;
/// NLMSGERR_ATTR_MSG: the kernel's extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused a request: `errno` is positive (e.g. 17 for EEXIST) and
    /// `message` is strerror plus the kernel's extended-ack text when it gave one.
    #[error("{what}: {message} (errno {errno})")]
    Kernel {
        what: String,
        errno: i32,
        message: String,
    },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("no tokio runtime to run the netlink connection on")]
    NoRuntime,
    #[error("{what}: the netlink connection is closed")]
    Closed { what: String },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("link {0:?} not found")]
    LinkNotFound(String),
    #[error("{what}: {detail}")]
    Unexpected { what: String, detail: String },
}

impl NetlinkError {
    /// The kernel's errno (positive), if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// EEXIST, e.g. [`Netlink::create_veth`] on a name that is taken.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(EEXIST)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "vxlan", "veth", ...; None for e.g. lo or a plain NIC.
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    /// IFF_UP (administratively up; says nothing about carrier).
    pub up: bool,
    pub vxlan: Option<VxlanInfo>,
}

/// One address of [`Netlink::all_addresses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressEntry {
    /// The link it is on.
    pub index: u32,
    pub net: IpNet,
    /// IFA_PROTO, if the kernel reported one.
    pub protocol: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<IpAddr>,
    pub port: u16,
    pub learning: bool,
    pub proxy: bool,
    /// IFLA_VXLAN_LINK, the underlay device, if one was given.
    pub underlay: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: IpAddr,
    pub port: u16,
    pub mtu: u32,
    pub master: u32,
    pub underlay: Option<u32>,
}

impl VxlanSpec {
    /// What the kernel reports for a device made from this spec (learning off,
    /// ARP/ND proxy on): what an existing device is compared with.
    pub fn info(&self) -> VxlanInfo {
        VxlanInfo {
            vni: self.vni,
            local: Some(self.local),
            port: self.port,
            learning: false,
            proxy: true,
            underlay: self.underlay.filter(|&u| u != 0),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host_name: String,
    pub master: Option<u32>,
    pub mtu: u32,
    pub peer_name: String,
    pub peer_ns: &'a NetNs,
    pub peer_mac: Option<MacAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dst: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    pub index: u32,
    pub dest: IpNet,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    pub dest: IpNet,
    pub gateway: Option<IpAddr>,
}

/// Aborts the connection task when the last `Netlink` clone goes (netlink-proto's
/// connection would otherwise outlive its handles).
#[derive(Debug)]
struct ConnectionTask(tokio::task::AbortHandle);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The longest wait for the next message of an answer.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// One rtnetlink socket, bound to the namespace it was created in.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    _task: Arc<ConnectionTask>,
}

type Connection = rtnetlink::proto::Connection<RouteNetlinkMessage>;

/// Creates the socket on the calling thread (so in its namespace), registered with
/// the runtime `rt`.
fn open_connection(
    rt: &tokio::runtime::Handle,
) -> Result<(Connection, rtnetlink::Handle), NetlinkError> {
    let _guard = rt.enter();
    let (mut conn, handle, _unsolicited) =
        rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    // Hand acks and NLMSG_DONE to `request`, which checks that each answer ended.
    conn.set_forward_ack(true);
    conn.set_forward_done(true);
    let socket = conn.socket_mut().socket_mut();
    // Extended acks carry the kernel's explanation of a refusal; capped acks keep
    // our request out of error replies.
    socket.set_ext_ack(true).map_err(NetlinkError::Socket)?;
    socket.set_cap_ack(true).map_err(NetlinkError::Socket)?;
    Ok((conn, handle))
}

impl Netlink {
    /// Socket in the calling thread's namespace; the connection task is spawned on
    /// the current tokio runtime.
    pub fn current() -> Result<Netlink, NetlinkError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (conn, handle) = open_connection(&rt)?;
        Ok(Netlink::spawn(&rt, conn, handle))
    }

    /// Socket created inside `ns` (on a short-lived thread, see [`netns::run_in`]);
    /// the connection task is spawned on the current runtime. Every request then
    /// acts in `ns`.
    pub fn in_namespace(ns: &NetNs) -> Result<Netlink, NetlinkError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let rt_for_thread = rt.clone();
        let (conn, handle) = netns::run_in(ns, move || open_connection(&rt_for_thread))??;
        tracing::debug!(netns = %ns.path().display(), "netlink socket opened in namespace");
        Ok(Netlink::spawn(&rt, conn, handle))
    }

    fn spawn(rt: &tokio::runtime::Handle, conn: Connection, handle: rtnetlink::Handle) -> Netlink {
        let task = rt.spawn(conn);
        Netlink {
            handle,
            _task: Arc::new(ConnectionTask(task.abort_handle())),
        }
    }

    /// Sends one request and collects the replies. `flags` are added to
    /// NLM_F_REQUEST; non-dump requests always ask for an ack, so the kernel's
    /// error (if any) comes back. Crate-visible for [`crate::router`], which builds
    /// its own messages (sticky FDB entries, kuryr-marked routes).
    pub(crate) async fn request(
        &self,
        what: &str,
        flags: u16,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        if flags & NLM_F_DUMP != NLM_F_DUMP {
            req.header.flags |= NLM_F_ACK;
        }
        req.finalize();
        let mut handle = self.handle.clone();
        let mut replies = handle.request(req).map_err(|_| NetlinkError::Closed {
            what: what.to_string(),
        })?;
        let mut out = Vec::new();
        // Every answer ends with an ack, an error or NLMSG_DONE; a stream that just
        // stops means the connection went away. A reply the kernel dropped (a full
        // receive buffer) must not wedge the caller: each message has a deadline.
        let mut complete = false;
        loop {
            let reply = match tokio::time::timeout(REPLY_TIMEOUT, replies.next()).await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(what, "netlink: no answer in time");
                    return Err(NetlinkError::Unexpected {
                        what: what.to_string(),
                        detail: format!("no answer within {REPLY_TIMEOUT:?}"),
                    });
                }
            };
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Done(_) => complete = true,
                NetlinkPayload::Error(e) => {
                    complete = true;
                    if let Some(code) = e.code {
                        let errno = code.get().saturating_abs();
                        let capped = reply.header.flags & NLM_F_CAPPED == NLM_F_CAPPED;
                        let mut message = io::Error::from_raw_os_error(errno).to_string();
                        if let Some(ext) = extack_message(&e.header, capped) {
                            message = format!("{message}: {ext}");
                        }
                        tracing::debug!(what, errno, %message, "netlink request refused");
                        return Err(NetlinkError::Kernel {
                            what: what.to_string(),
                            errno,
                            message,
                        });
                    }
                }
                NetlinkPayload::Overrun(_) => {
                    return Err(NetlinkError::Unexpected {
                        what: what.to_string(),
                        detail: "netlink overrun".to_string(),
                    });
                }
                _ => {}
            }
        }
        if !complete {
            return Err(NetlinkError::Closed {
                what: what.to_string(),
            });
        }
        Ok(out)
    }

    /// A request whose only answer is an ack.
    pub(crate) async fn ack(
        &self,
        what: &str,
        flags: u16,
        msg: RouteNetlinkMessage,
    ) -> Result<(), NetlinkError> {
        tracing::debug!(what, "netlink request");
        self.request(what, flags, msg).await.map(drop)
    }

    // ---- links -------------------------------------------------------------

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self
            .request(
                "listing links",
                NLM_F_DUMP,
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })
            .collect())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let what = format!("getting link {name}");
        match self
            .request(&what, 0, RouteNetlinkMessage::GetLink(msg))
            .await
        {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let what = format!("getting link {index}");
        match self
            .request(&what, 0, RouteNetlinkMessage::GetLink(msg))
            .await
        {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn require_link(&self, name: &str) -> Result<Link, NetlinkError> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound(name.to_string()))
    }

    /// Creates the bridge if missing (mtu, up); returns it. Idempotent. A link of
    /// that name that is not a bridge is an error.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<Link, NetlinkError> {
        let link = match self.link_by_name(name).await? {
            Some(link) => {
                if link.kind.as_deref() != Some("bridge") {
                    return Err(NetlinkError::Unexpected {
                        what: format!("ensuring bridge {name}"),
                        detail: format!("a link of kind {:?} has that name", link.kind),
                    });
                }
                link
            }
            None => {
                let msg = new_link(name, None, vec![LinkInfo::Kind(InfoKind::Bridge)]);
                self.ack(
                    &format!("creating bridge {name}"),
                    NLM_F_CREATE | NLM_F_EXCL,
                    RouteNetlinkMessage::NewLink(msg),
                )
                .await?;
                let link = self.require_link(name).await?;
                // Set through RTM_SETLINK so the bridge keeps it as user-set rather
                // than following its ports' minimum.
                self.set_mtu(link.index, mtu).await?;
                link
            }
        };
        self.converge_link(link, None, mtu).await
    }

    /// Brings an existing link to master/mtu/up, then reads it back.
    async fn converge_link(
        &self,
        link: Link,
        master: Option<u32>,
        mtu: u32,
    ) -> Result<Link, NetlinkError> {
        if let Some(master) = master
            && link.master != Some(master)
        {
            self.set_master(link.index, master).await?;
        }
        if link.mtu != mtu {
            self.set_mtu(link.index, mtu).await?;
        }
        if !link.up {
            self.set_up(link.index).await?;
        }
        self.link_by_index(link.index)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound(link.name.clone()))
    }

    /// VXLAN device: id=vni, local, dstport=port, learning off, proxy on, mtu,
    /// attached to `master`, optional underlay, up. A device of that name with other
    /// settings (or not a vxlan) is deleted and recreated; a matching one only gets
    /// master/mtu/up ensured. Idempotent.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Link, NetlinkError> {
        let name = &spec.name;
        let wanted = spec.info();
        let mut existing = self.link_by_name(name).await?;
        if let Some(link) = &existing
            && (link.kind.as_deref() != Some("vxlan") || link.vxlan.as_ref() != Some(&wanted))
        {
            tracing::debug!(name, have = ?link.vxlan, want = ?wanted, "vxlan differs, recreating");
            self.delete_link(link.index).await?;
            existing = None;
        }
        let link = match existing {
            Some(link) => link,
            None => {
                let mut data = vec![
                    InfoVxlan::Id(spec.vni),
                    InfoVxlan::Port(spec.port),
                    InfoVxlan::Learning(false),
                    InfoVxlan::Proxy(true),
                ];
                match spec.local {
                    IpAddr::V4(a) => data.push(InfoVxlan::Local(a)),
                    IpAddr::V6(a) => data.push(InfoVxlan::Local6(a)),
                }
                if let Some(underlay) = wanted.underlay {
                    data.push(InfoVxlan::Link(underlay));
                }
                let mut msg = new_link(
                    name,
                    Some(spec.mtu),
                    vec![
                        LinkInfo::Kind(InfoKind::Vxlan),
                        LinkInfo::Data(InfoData::Vxlan(data)),
                    ],
                );
                msg.attributes.push(LinkAttribute::Controller(spec.master));
                self.ack(
                    &format!("creating vxlan {name} (vni {})", spec.vni),
                    NLM_F_CREATE | NLM_F_EXCL,
                    RouteNetlinkMessage::NewLink(msg),
                )
                .await?;
                self.require_link(name).await?
            }
        };
        self.converge_link(link, Some(spec.master), spec.mtu).await
    }

    /// One RTM_NEWLINK creating a veth pair: the host end `host_name` here (mtu,
    /// master if given), the peer `peer_name` born directly inside `peer_ns`
    /// (IFLA_NET_NS_FD in the peer's info) with `peer_mac` and mtu. Then the host end
    /// is brought up. EEXIST (see [`NetlinkError::is_exists`]) when a link of that
    /// name exists here, or the peer name is taken in `peer_ns`.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<Link, NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(spec.peer_name.clone()));
        peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
        if let Some(mac) = spec.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        // The fd stays open: `spec` borrows the NetNs for the whole call.
        peer.attributes
            .push(LinkAttribute::NetNsFd(spec.peer_ns.as_fd().as_raw_fd()));
        let mut msg = new_link(
            &spec.host_name,
            Some(spec.mtu),
            vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ],
        );
        if let Some(master) = spec.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        self.ack(
            &format!(
                "creating veth {} (peer {} in {})",
                spec.host_name,
                spec.peer_name,
                spec.peer_ns.path().display()
            ),
            NLM_F_CREATE | NLM_F_EXCL,
            RouteNetlinkMessage::NewLink(msg),
        )
        .await?;
        let link = self.require_link(&spec.host_name).await?;
        self.set_up(link.index).await?;
        self.link_by_index(link.index)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound(spec.host_name.clone()))
    }

    async fn set_link(&self, what: &str, msg: LinkMessage) -> Result<(), NetlinkError> {
        self.ack(what, 0, RouteNetlinkMessage::SetLink(msg)).await
    }

    pub async fn set_master(&self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Controller(master));
        self.set_link(&format!("setting master of link {index} to {master}"), msg)
            .await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(&format!("setting link {index} up"), msg)
            .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(&format!("setting mtu of link {index} to {mtu}"), msg)
            .await
    }

    /// Sets a link's MAC address. On a bridge this also pins it: the bridge no longer
    /// takes the lowest MAC of its ports (even when set to the one it has).
    pub async fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        self.set_link(&format!("setting the MAC of link {index} to {mac}"), msg)
            .await
    }

    /// Deletes a link (for a veth, both ends go). A missing link is success.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self
            .ack(
                &format!("deleting link {index}"),
                0,
                RouteNetlinkMessage::DelLink(msg),
            )
            .await
        {
            Err(e) if e.errno() == Some(ENODEV) => Ok(()),
            other => other,
        }
    }

    // ---- FDB ---------------------------------------------------------------

    /// Bridge-family FDB entries of a (vxlan) device that have a destination IP
    /// (what `bridge fdb show dev X` lists with `dst`).
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        let replies = self
            .request(
                &format!("listing fdb of link {index}"),
                NLM_F_DUMP,
                RouteNetlinkMessage::GetNeighbour(msg),
            )
            .await?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index || n.header.family != AddressFamily::Bridge {
                continue;
            }
            let (mut mac, mut dst) = (None, None);
            for attr in &n.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(b) => mac = mac_from(b),
                    NeighbourAttribute::Destination(a) => dst = neighbour_ip(a),
                    _ => {}
                }
            }
            if let (Some(mac), Some(dst)) = (mac, dst) {
                out.push(FdbEntry { mac, dst });
            }
        }
        Ok(out)
    }

    fn fdb_message(index: u32, mac: MacAddr, dst: IpAddr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
        msg
    }

    /// Like `bridge fdb append MAC dev X dst IP` (permanent, NTF_SELF,
    /// NLM_F_CREATE|NLM_F_APPEND). The all-zeros MAC is the flood entry; it may have
    /// several destinations. An existing entry is success.
    pub async fn fdb_append(
        &self,
        index: u32,
        mac: MacAddr,
        dst: IpAddr,
    ) -> Result<(), NetlinkError> {
        match self
            .ack(
                &format!("appending fdb {mac} dst {dst} on link {index}"),
                NLM_F_CREATE | NLM_F_APPEND,
                RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
            )
            .await
        {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }

    /// Removes one (mac, dst) FDB entry; a missing one is success.
    pub async fn fdb_delete(
        &self,
        index: u32,
        mac: MacAddr,
        dst: IpAddr,
    ) -> Result<(), NetlinkError> {
        match self
            .ack(
                &format!("deleting fdb {mac} dst {dst} on link {index}"),
                0,
                RouteNetlinkMessage::DelNeighbour(Self::fdb_message(index, mac, dst)),
            )
            .await
        {
            Err(e) if e.errno() == Some(ENOENT) => Ok(()),
            other => other,
        }
    }

    // ---- neighbours --------------------------------------------------------

    /// ARP and NDP entries of a device that have a link-layer address (NOARP entries,
    /// the kernel's own multicast/broadcast ones, are left out).
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = NeighbourMessage::default();
            msg.header.family = family;
            let replies = self
                .request(
                    &format!("listing neighbours of link {index}"),
                    NLM_F_DUMP,
                    RouteNetlinkMessage::GetNeighbour(msg),
                )
                .await?;
            for m in replies {
                let RouteNetlinkMessage::NewNeighbour(n) = m else {
                    continue;
                };
                if n.header.ifindex != index || n.header.state == NeighbourState::Noarp {
                    continue;
                }
                let (mut mac, mut ip) = (None, None);
                for attr in &n.attributes {
                    match attr {
                        NeighbourAttribute::LinkLayerAddress(b) => mac = mac_from(b),
                        NeighbourAttribute::Destination(a) => ip = neighbour_ip(a),
                        _ => {}
                    }
                }
                if let (Some(mac), Some(ip)) = (mac, ip) {
                    out.push(Neighbour { ip, mac });
                }
            }
        }
        Ok(out)
    }

    fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family_of(ip);
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        msg
    }

    /// Like `ip neigh replace IP lladdr MAC dev X nud permanent`.
    pub async fn neighbour_replace(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        let mut msg = Self::neighbour_message(index, ip);
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.ack(
            &format!("replacing neighbour {ip} lladdr {mac} on link {index}"),
            NLM_F_CREATE | NLM_F_REPLACE,
            RouteNetlinkMessage::NewNeighbour(msg),
        )
        .await
    }

    /// Removes a neighbour entry; a missing one is success.
    pub async fn neighbour_delete(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        match self
            .ack(
                &format!("deleting neighbour {ip} on link {index}"),
                0,
                RouteNetlinkMessage::DelNeighbour(Self::neighbour_message(index, ip)),
            )
            .await
        {
            Err(e) if e.errno() == Some(ENOENT) => Ok(()),
            other => other,
        }
    }

    // ---- addresses ---------------------------------------------------------

    /// Every address of the device, v4 and v6, including IPv6 link-local ones.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let replies = self
            .request(
                &format!("listing addresses of link {index}"),
                NLM_F_DUMP,
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            )
            .await?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address when present (it differs
            // from IFA_ADDRESS only on point-to-point links).
            let mut ip = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(l) => ip = Some(*l),
                    AddressAttribute::Address(l) if ip.is_none() => ip = Some(*l),
                    _ => {}
                }
            }
            if let Some(net) = ip.and_then(|ip| IpNet::new(ip, a.header.prefix_len).ok()) {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// Every address in the namespace, with its link and IFA_PROTO (who added it,
    /// when the kernel reports it: Linux 6.1 and later).
    pub async fn all_addresses(&self) -> Result<Vec<AddressEntry>, NetlinkError> {
        let replies = self
            .request(
                "listing addresses",
                NLM_F_DUMP,
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            )
            .await?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let mut ip = None;
            let mut protocol = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(l) => ip = Some(*l),
                    AddressAttribute::Address(l) if ip.is_none() => ip = Some(*l),
                    AddressAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
                    _ => {}
                }
            }
            if let Some(net) = ip.and_then(|ip| IpNet::new(ip, a.header.prefix_len).ok()) {
                out.push(AddressEntry {
                    index: a.header.index,
                    net,
                    protocol,
                });
            }
        }
        Ok(out)
    }

    /// [`Netlink::add_address`] marked with IFA_PROTO `protocol`, so that whoever
    /// added it can tell it from others' (older kernels ignore the mark).
    pub async fn add_address_with_protocol(
        &self,
        index: u32,
        addr: IpNet,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let mut msg = Self::address_message(index, addr);
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(protocol)));
        self.new_address(index, addr, msg).await
    }

    fn address_message(index: u32, addr: IpNet) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(addr.addr());
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
        msg.attributes.push(AddressAttribute::Address(addr.addr()));
        msg
    }

    /// Adds an address; IPv6 ones get IFA_F_NODAD so they are usable at once. An
    /// existing address is success.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.new_address(index, addr, Self::address_message(index, addr))
            .await
    }

    async fn new_address(
        &self,
        index: u32,
        addr: IpNet,
        mut msg: AddressMessage,
    ) -> Result<(), NetlinkError> {
        if addr.addr().is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match self
            .ack(
                &format!("adding address {addr} to link {index}"),
                NLM_F_CREATE | NLM_F_EXCL,
                RouteNetlinkMessage::NewAddress(msg),
            )
            .await
        {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }

    /// Removes an address; a missing one is success.
    pub async fn delete_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        match self
            .ack(
                &format!("deleting address {addr} from link {index}"),
                0,
                RouteNetlinkMessage::DelAddress(Self::address_message(index, addr)),
            )
            .await
        {
            Err(e) if e.errno() == Some(EADDRNOTAVAIL) => Ok(()),
            other => other,
        }
    }

    // ---- routes ------------------------------------------------------------

    /// Unicast routes of the main table whose output device is `index` (v4 and v6,
    /// the kernel's prefix routes included).
    pub async fn routes(&self, index: u32) -> Result<Vec<Route>, NetlinkError> {
        let replies = self
            .request(
                &format!("listing routes of link {index}"),
                NLM_F_DUMP,
                RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            )
            .await?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            let unspecified: IpAddr = match r.header.address_family {
                AddressFamily::Inet => Ipv4Addr::UNSPECIFIED.into(),
                AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
                _ => continue,
            };
            let mut table = u32::from(r.header.table);
            let (mut oif, mut dest, mut gateway) = (None, unspecified, None);
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    RouteAttribute::Destination(a) => {
                        if let Some(ip) = route_ip(a) {
                            dest = ip;
                        }
                    }
                    RouteAttribute::Gateway(a) => gateway = route_ip(a),
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) || oif != Some(index) {
                continue;
            }
            if let Ok(dest) = IpNet::new(dest, r.header.destination_prefix_length) {
                out.push(Route {
                    index,
                    dest,
                    gateway,
                });
            }
        }
        Ok(out)
    }

    fn route_message(route: &Route) -> RouteMessage {
        let dest = route.dest.trunc();
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(dest.addr());
        msg.header.destination_prefix_length = dest.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if dest.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dest.addr())));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(route.index));
        msg
    }

    /// Adds a main-table route through `route.index` (dest 0.0.0.0/0 or ::/0 is the
    /// default route; host bits of dest are cleared). An existing route is success.
    pub async fn add_route(&self, route: &Route) -> Result<(), NetlinkError> {
        match self
            .ack(
                &format!("adding route {}", describe(route)),
                NLM_F_CREATE | NLM_F_EXCL,
                RouteNetlinkMessage::NewRoute(Self::route_message(route)),
            )
            .await
        {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }

    /// Removes a route; a missing one is success.
    pub async fn delete_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let mut msg = Self::route_message(route);
        // Let the kernel match any scope.
        msg.header.scope = RouteScope::NoWhere;
        match self
            .ack(
                &format!("deleting route {}", describe(route)),
                0,
                RouteNetlinkMessage::DelRoute(msg),
            )
            .await
        {
            Err(e) if e.errno() == Some(ESRCH) => Ok(()),
            other => other,
        }
    }

    // ---- the container end -------------------------------------------------

    /// For the container end, on a `Netlink` in the container's namespace: lo up,
    /// `ifname` up, addresses converged (missing ones added, others removed, IPv6
    /// link-local ones kept), then routes added where missing. Idempotent; returns
    /// how many changes it made (0: everything was already in place).
    pub async fn configure_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<usize, NetlinkError> {
        self.converge_interface(ifname, addresses, routes, true)
            .await
    }

    /// Like [`Netlink::configure_interface`], but only puts back what is missing:
    /// addresses someone added inside the container (a VIP of an allowed address
    /// pair, say) are theirs and stay.
    pub async fn repair_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
    ) -> Result<usize, NetlinkError> {
        self.converge_interface(ifname, addresses, routes, false)
            .await
    }

    async fn converge_interface(
        &self,
        ifname: &str,
        addresses: &[IpNet],
        routes: &[RouteSpec],
        prune: bool,
    ) -> Result<usize, NetlinkError> {
        let mut changes = 0;
        let lo = self.require_link("lo").await?;
        if !lo.up {
            self.set_up(lo.index).await?;
            changes += 1;
        }
        let link = self.require_link(ifname).await?;
        if !link.up {
            self.set_up(link.index).await?;
            changes += 1;
        }
        let have = self.addresses(link.index).await?;
        for stale in have.iter().filter(|a| prune && !addresses.contains(a)) {
            if let IpNet::V6(v6) = stale
                && v6.addr().segments()[0] & 0xffc0 == 0xfe80
            {
                continue;
            }
            self.delete_address(link.index, *stale).await?;
            changes += 1;
        }
        // Read again: removing a primary IPv4 address also removes its secondaries.
        let have = self.addresses(link.index).await?;
        for addr in addresses.iter().filter(|a| !have.contains(a)) {
            self.add_address(link.index, *addr).await?;
            changes += 1;
        }
        let have = self.routes(link.index).await?;
        for spec in routes {
            let route = Route {
                index: link.index,
                dest: spec.dest.trunc(),
                gateway: spec.gateway,
            };
            if !have.contains(&route) {
                self.add_route(&route).await?;
                changes += 1;
            }
        }
        Ok(changes)
    }
}

// ---- message helpers ---------------------------------------------------------

fn new_link(name: &str, mtu: Option<u32>, info: Vec<LinkInfo>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    msg
}

/// "DEST [via GW] dev INDEX", for messages.
fn describe(route: &Route) -> String {
    match route.gateway {
        Some(gw) => format!("{} via {gw} dev {}", route.dest, route.index),
        None => format!("{} dev {}", route.dest, route.index),
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn mac_from(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(v4))
    } else {
        <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
    }
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some((*v4).into()),
        NeighbourAddress::Inet6(v6) => Some((*v6).into()),
        // Bridge-family (FDB) entries carry the raw address bytes.
        NeighbourAddress::Other(bytes) => ip_from_bytes(bytes),
        _ => None,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        master: None,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        vxlan: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) => link.master = Some(*m).filter(|&m| m != 0),
            LinkAttribute::Address(a) => link.mac = mac_from(a),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(parse_vxlan(data));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(data: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo {
        vni: 0,
        local: None,
        port: 0,
        learning: false,
        proxy: false,
        underlay: None,
    };
    for d in data {
        match d {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Local(a) => info.local = Some((*a).into()),
            InfoVxlan::Local6(a) => info.local = Some((*a).into()),
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Learning(l) => info.learning = *l,
            InfoVxlan::Proxy(p) => info.proxy = *p,
            InfoVxlan::Link(l) => info.underlay = Some(*l).filter(|&l| l != 0),
            _ => {}
        }
    }
    info
}

/// The kernel's extended-ack text (NLMSGERR_ATTR_MSG) in an error reply's payload
/// after the errno: the request's header (or the whole request unless capped),
/// then attributes.
fn extack_message(payload: &[u8], capped: bool) -> Option<String> {
    const NLMSG_HDRLEN: usize = 16;
    let skip = if capped {
        NLMSG_HDRLEN
    } else {
        let len = u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?) as usize;
        len.checked_add(3)? & !3
    };
    let attrs = payload.get(skip..)?;
    NlasIterator::new(attrs)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .to_string()
        })
        .filter(|s| !s.is_empty())
}
