//! nf_tables over netlink, in-process: a monitor that tells when anyone but kuryr
//! changed kuryr's tables.
//!
//! The kernel announces every committed nf_tables transaction to the
//! `NFNLGRP_NFTABLES` group: one message per object changed (each names its table),
//! then a `NEWGEN` message carrying the new generation and the pid of the process
//! that committed. A transaction that touched a `kuryr` table (bridge or inet
//! family) and was committed by neither this process nor an `nft` it ran is drift.
//! Reading the kernel's ruleset back to compare would cost a dump of every rule per
//! check; this costs nothing while nobody touches the tables.
//!
//! A listener that falls behind gets `ENOBUFS` instead of the lost messages: that
//! counts as drift too (what was lost is unknown).
//!
//! [`Elements`] adds and deletes set and map elements in one atomic batch on a
//! netlink socket: the agent's hot path (a port bound or gone, a group member
//! joining or leaving) costs one round trip, with no process and no cache to load.
//! Its transactions are told from others' by the socket's port id, which the
//! kernel puts in the header of every notification (the pid in `NEWGEN` is the
//! sending thread's, which in a multithreaded process is not the process id).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use netlink_sys::{AsyncSocket, AsyncSocketExt, Socket, TokioSocket, protocols::NETLINK_NETFILTER};
use tokio::sync::Notify;

use crate::nft::TABLE;

const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_PROC_PID: u16 = 2;
/// The table name is attribute 1 of every table, chain, rule, set, element,
/// object and flowtable message.
const NFTA_TABLE: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Pids of the `nft` processes this process ran lately (their transactions are
/// kuryr's own).
static CHILDREN: Mutex<VecDeque<u32>> = Mutex::new(VecDeque::new());

/// Netlink port ids of this process's own nf_tables sockets.
static SOCKETS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Remembers that `pid` is an `nft` this process started.
pub(crate) fn remember_child(pid: u32) {
    let mut c = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= 64 {
        c.pop_front();
    }
    c.push_back(pid);
}

/// `pid` is the committing process's pid in the kernel's first pid namespace, and
/// `portid` its socket's port id, which autobinding makes the process's pid in its own
/// namespace: in a container (kuryr's DaemonSet), our `nft` children are recognised by
/// the latter only.
fn is_ours(pid: Option<u32>, portid: u32) -> bool {
    let child = |pid: u32| {
        pid == std::process::id()
            || CHILDREN
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&pid)
    };
    pid.is_some_and(child)
        || (portid != 0
            && (child(portid)
                || SOCKETS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&portid)))
}

/// What one notification says, as far as the monitor cares.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// An object of table `table` (family `family`) changed.
    Object { family: u8, table: String },
    /// The end of a transaction, committed by process `pid` through the socket
    /// with port id `portid`.
    Generation { pid: Option<u32>, portid: u32 },
}

/// The nf_tables notifications in one datagram.
fn parse(buf: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(hdr) = buf.get(off..off + 16) {
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let ty = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let portid = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        if len < 16 || off + len > buf.len() {
            break;
        }
        let body = &buf[off + 16..off + len];
        off += (len + 3) & !3;
        if ty >> 8 != NFNL_SUBSYS_NFTABLES || body.len() < 4 {
            continue;
        }
        let family = body[0];
        let attrs = attributes(&body[4..]);
        if ty & 0xff == NFT_MSG_NEWGEN {
            let pid = attrs
                .iter()
                .find(|(t, _)| *t == NFTA_GEN_PROC_PID)
                .and_then(|(_, v)| <[u8; 4]>::try_from(*v).ok())
                .map(u32::from_be_bytes);
            out.push(Event::Generation { pid, portid });
        } else if let Some((_, v)) = attrs.iter().find(|(t, _)| *t == NFTA_TABLE) {
            let table = String::from_utf8_lossy(v)
                .trim_end_matches('\0')
                .to_string();
            out.push(Event::Object { family, table });
        }
    }
    out
}

/// Top-level netlink attributes: (type, value).
fn attributes(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// Follows transactions, and says whether one touched kuryr's tables from outside.
#[derive(Default)]
struct Tracker {
    touched: bool,
}

impl Tracker {
    /// Whether any of `events` ends a foreign transaction (all are fed).
    fn feed_all(&mut self, events: Vec<Event>) -> bool {
        let mut foreign = false;
        for e in events {
            foreign |= self.feed(e);
        }
        foreign
    }

    /// Whether `e` ends a foreign transaction that touched kuryr's tables.
    fn feed(&mut self, e: Event) -> bool {
        match e {
            Event::Object { family, table } => {
                if (table == TABLE && (family == NFPROTO_INET || family == NFPROTO_BRIDGE))
                    || (table == crate::nft::DVR_TABLE && family == NFPROTO_BRIDGE)
                {
                    self.touched = true;
                }
                false
            }
            Event::Generation { pid, portid } => {
                let touched = std::mem::take(&mut self.touched);
                touched && !is_ours(pid, portid)
            }
        }
    }
}

/// Listens for changes to kuryr's tables made by others, in the namespace it was
/// started in. Stops when dropped.
pub struct Monitor {
    drift: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Monitor {
    /// Subscribes (in the calling thread's namespace; needs a tokio runtime) and
    /// notifies `wake` on each foreign change.
    pub fn start(wake: Arc<Notify>) -> io::Result<Monitor> {
        let mut socket = TokioSocket::new(NETLINK_NETFILTER)?;
        socket.socket_mut().bind_auto()?;
        socket.socket_ref().add_membership(NFNLGRP_NFTABLES)?;
        // A full replace of the tables by kuryr itself is thousands of messages.
        socket.socket_ref().set_rx_buf_sz(8 << 20)?;
        let drift = Arc::new(AtomicBool::new(false));
        let flag = drift.clone();
        let task = tokio::spawn(async move {
            let mut tracker = Tracker::default();
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
            loop {
                buf.clear();
                match socket.recv(&mut buf).await {
                    Ok(()) => {
                        let foreign = tracker.feed_all(parse(&buf));
                        if foreign {
                            tracing::warn!(
                                "kuryr's nftables tables were changed by another program; repairing"
                            );
                            flag.store(true, Ordering::SeqCst);
                            wake.notify_one();
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                        tracing::warn!("nftables notifications lost; checking kuryr's tables");
                        tracker = Tracker::default();
                        flag.store(true, Ordering::SeqCst);
                        wake.notify_one();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "nftables monitor failed; drift goes unnoticed until restart");
                        return;
                    }
                }
            }
        });
        Ok(Monitor { drift, task })
    }

    /// Whether drift was seen since the last call.
    pub fn take(&self) -> bool {
        self.drift.swap(false, Ordering::SeqCst)
    }
}

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSG_ERROR: u16 = 2;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
/// Elements per message: a batch of any size stays within socket buffers.
const PER_MESSAGE: usize = 256;

/// The nf_tables family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Inet,
    Bridge,
}

impl Family {
    fn code(self) -> u8 {
        match self {
            Family::Inet => NFPROTO_INET,
            Family::Bridge => NFPROTO_BRIDGE,
        }
    }
}

/// One set or map element, its key (and data) as the kernel stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    /// The inclusive end of a range, in a set of concatenations with intervals.
    pub key_end: Option<Vec<u8>>,
    /// The (exclusive) end of a range, in a set of single values with intervals.
    pub interval_end: bool,
    pub data: Option<Data>,
}

/// What a map element maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Jump(String),
    Value(Vec<u8>),
}

/// Elements to add to, or delete from, one set or map of kuryr's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub family: Family,
    pub set: String,
    pub add: bool,
    pub elements: Vec<Element>,
}

#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("nf_tables netlink socket: {0}")]
    Io(#[source] io::Error),
    #[error("nf_tables refused the element batch (set {set}): {}{}", std::io::Error::from_raw_os_error(*.errno), .message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused {
        errno: i32,
        set: String,
        message: Option<String>,
    },
    #[error("nf_tables answered {got} of {want} messages of the batch")]
    Unanswered { got: usize, want: usize },
}

/// A netlink socket for element batches, in the namespace it was opened in.
pub struct Elements {
    socket: Socket,
    portid: u32,
    seq: u32,
}

impl Drop for Elements {
    fn drop(&mut self) {
        SOCKETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| *p != self.portid);
    }
}

/// Appends attribute `ty` with `value`, padded.
fn put(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize((buf.len() + 3) & !3, 0);
}

/// Appends nested attribute `ty` filled by `f`.
fn nest(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Appends one netlink message: header, nfgenmsg, then what `body` writes.
fn message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, res_id (the subsystem, for batch messages).
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    body(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn element(buf: &mut Vec<u8>, e: &Element) {
    nest(buf, NFTA_LIST_ELEM, |b| {
        nest(b, NFTA_SET_ELEM_KEY, |b| put(b, NFTA_DATA_VALUE, &e.key));
        if let Some(end) = &e.key_end {
            nest(b, NFTA_SET_ELEM_KEY_END, |b| put(b, NFTA_DATA_VALUE, end));
        }
        if e.interval_end {
            put(
                b,
                NFTA_SET_ELEM_FLAGS,
                &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
            );
        }
        match &e.data {
            None => {}
            Some(Data::Value(v)) => nest(b, NFTA_SET_ELEM_DATA, |b| put(b, NFTA_DATA_VALUE, v)),
            Some(Data::Jump(chain)) => nest(b, NFTA_SET_ELEM_DATA, |b| {
                nest(b, NFTA_DATA_VERDICT, |b| {
                    put(b, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                    put(b, NFTA_VERDICT_CHAIN, &cstr(chain));
                })
            }),
        }
    });
}

impl Elements {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Elements, NfnlError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NfnlError::Io)?;
        let addr = socket.bind_auto().map_err(NfnlError::Io)?;
        socket.set_ext_ack(true).map_err(NfnlError::Io)?;
        socket.set_cap_ack(true).map_err(NfnlError::Io)?;
        // Replies are queued while the kernel runs the batch, before send returns.
        socket.set_non_blocking(true).map_err(NfnlError::Io)?;
        let portid = addr.port_number();
        SOCKETS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(portid);
        Ok(Elements {
            socket,
            portid,
            seq: 0,
        })
    }

    /// Applies `changes` in order, as one transaction of table `table`: all or
    /// nothing.
    pub fn apply(&mut self, table: &str, changes: &[Change]) -> Result<(), NfnlError> {
        let mut buf = Vec::with_capacity(4096);
        let begin = self.next_seq();
        message(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            |_| {},
        );
        let mut sent: Vec<(u32, &str)> = Vec::new();
        for c in changes {
            for chunk in c.elements.chunks(PER_MESSAGE) {
                let seq = self.next_seq();
                let (ty, flags) = if c.add {
                    (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
                } else {
                    (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
                };
                message(
                    &mut buf,
                    (NFNL_SUBSYS_NFTABLES << 8) | ty,
                    flags,
                    seq,
                    c.family.code(),
                    |b| {
                        put(b, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
                        put(b, NFTA_SET_ELEM_LIST_SET, &cstr(&c.set));
                        nest(b, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                            for e in chunk {
                                element(b, e);
                            }
                        });
                    },
                );
                sent.push((seq, &c.set));
            }
        }
        if sent.is_empty() {
            return Ok(());
        }
        let end = self.next_seq();
        message(&mut buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, |_| {});
        self.socket.send(&buf, 0).map_err(NfnlError::Io)?;

        let mut answered = 0;
        let mut first_error = None;
        let mut rx: Vec<u8> = Vec::with_capacity(1 << 16);
        while answered < sent.len() {
            rx.clear();
            match self.socket.recv(&mut rx, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(NfnlError::Io(e)),
            }
            for (seq, errno, message) in acks(&rx) {
                let Some((_, set)) = sent.iter().find(|(s, _)| *s == seq) else {
                    continue;
                };
                answered += 1;
                if errno != 0 && first_error.is_none() {
                    first_error = Some(NfnlError::Refused {
                        errno,
                        set: set.to_string(),
                        message,
                    });
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if answered < sent.len() {
            return Err(NfnlError::Unanswered {
                got: answered,
                want: sent.len(),
            });
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }
}

// ---- reading: the generation and dumps ---------------------------------------------

const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
/// Get requests (dumps) of nf_tables objects (`NFT_MSG_GET*`).
pub(crate) const NFT_MSG_GETTABLE: u16 = 1;
pub(crate) const NFT_MSG_GETCHAIN: u16 = 4;
pub(crate) const NFT_MSG_GETRULE: u16 = 7;
pub(crate) const NFT_MSG_GETSET: u16 = 10;
pub(crate) const NFT_MSG_GETSETELEM: u16 = 13;
pub(crate) const NFT_MSG_GETOBJ: u16 = 19;
const ENOENT: i32 = 2;

/// A blocking nf_tables socket that reads the generation and dumps objects, in the
/// namespace it was opened in.
pub(crate) struct Reader {
    socket: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl Reader {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Reader, NfnlError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NfnlError::Io)?;
        socket.bind_auto().map_err(NfnlError::Io)?;
        Ok(Reader {
            socket,
            seq: 0,
            rx: Vec::with_capacity(1 << 16),
        })
    }

    /// The namespace's nf_tables generation: every committed transaction (of any
    /// table) bumps it.
    pub(crate) fn generation(&mut self) -> Result<u32, NfnlError> {
        let mut id = None;
        self.request(NFT_MSG_GETGEN, 0, 0, &[], |attrs| {
            if id.is_none() {
                id = attributes(attrs)
                    .into_iter()
                    .find(|(t, _)| *t == NFTA_GEN_ID)
                    .and_then(|(_, v)| <[u8; 4]>::try_from(v).ok())
                    .map(u32::from_be_bytes);
            }
        })?;
        id.ok_or_else(|| NfnlError::Io(io::Error::other("nf_tables generation without an id")))
    }

    /// Dumps `msg` (an `NFT_MSG_GET*`) of `family` with the filter attributes
    /// `attrs`; `each` gets every reply's attributes (after the nfgenmsg). False
    /// when the kernel answered ENOENT (the table or set named is absent).
    pub(crate) fn dump(
        &mut self,
        msg: u16,
        family: Family,
        attrs: &[(u16, &str)],
        each: impl FnMut(&[u8]),
    ) -> Result<bool, NfnlError> {
        let attrs: Vec<(u16, Vec<u8>)> = attrs.iter().map(|(t, v)| (*t, cstr(v))).collect();
        self.request(msg, NLM_F_DUMP, family.code(), &attrs, each)
    }

    fn request(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        attrs: &[(u16, Vec<u8>)],
        mut each: impl FnMut(&[u8]),
    ) -> Result<bool, NfnlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut buf = Vec::with_capacity(128);
        message(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family,
            |b| {
                for (t, v) in attrs {
                    put(b, *t, v);
                }
            },
        );
        // nfgenmsg.res_id is 0 in requests (message() writes the subsystem).
        if let Some(res) = buf.get_mut(18..20) {
            res.copy_from_slice(&[0, 0]);
        }
        self.socket.send(&buf, 0).map_err(NfnlError::Io)?;
        let dump = flags & NLM_F_DUMP != 0;
        loop {
            self.rx.clear();
            self.socket.recv(&mut self.rx, 0).map_err(NfnlError::Io)?;
            let mut off = 0;
            let rx = &self.rx;
            while let Some(hdr) = rx.get(off..off + 16) {
                let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
                let ty = u16::from_ne_bytes([hdr[4], hdr[5]]);
                let got = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
                if len < 16 || off + len > rx.len() {
                    break;
                }
                let body = &rx[off + 16..off + len];
                off += (len + 3) & !3;
                if got != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(true),
                    NLMSG_ERROR => {
                        let errno = body
                            .get(..4)
                            .map(|c| -i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                            .unwrap_or(0);
                        match errno {
                            0 if dump => continue,
                            0 => return Ok(true),
                            ENOENT => return Ok(false),
                            e => return Err(NfnlError::Io(io::Error::from_raw_os_error(e))),
                        }
                    }
                    _ => {
                        if let Some(attrs) = body.get(4..) {
                            each(attrs);
                        }
                    }
                }
            }
        }
    }
}

/// Top-level attributes of a message body (after the nfgenmsg): (type, value).
pub(crate) fn attrs_of(body: &[u8]) -> Vec<(u16, &[u8])> {
    attributes(body)
}

/// The acknowledgements in a datagram: (sequence, errno (0: done), kernel message).
fn acks(buf: &[u8]) -> Vec<(u32, i32, Option<String>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(hdr) = buf.get(off..off + 16) {
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let ty = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let flags = u16::from_ne_bytes([hdr[6], hdr[7]]);
        let seq = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        if len < 16 || off + len > buf.len() {
            break;
        }
        let body = &buf[off + 16..off + len];
        off += (len + 3) & !3;
        if ty != NLMSG_ERROR || body.len() < 4 {
            continue;
        }
        let errno = -i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
        // With capped acks the request's header (16 bytes) follows, then TLVs.
        let message = (flags & NLM_F_ACK_TLVS != 0)
            .then(|| body.get(20..))
            .flatten()
            .and_then(|tlvs| {
                attributes(tlvs)
                    .into_iter()
                    .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                    .map(|(_, v)| {
                        String::from_utf8_lossy(v)
                            .trim_end_matches('\0')
                            .to_string()
                    })
            });
        out.push((seq, errno, message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len();
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            body.resize((body.len() + 3) & !3, 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | ty).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    fn transaction(table: &str, family: u8, pid: u32) -> Vec<u8> {
        let mut d = msg(8, family, &[(1, format!("{table}\0").as_bytes())]);
        d.extend(msg(
            NFT_MSG_NEWGEN,
            0,
            &[(1, &7u32.to_be_bytes()), (2, &pid.to_be_bytes())],
        ));
        d
    }

    fn foreign(datagram: &[u8]) -> bool {
        Tracker::default().feed_all(parse(datagram))
    }

    #[test]
    fn a_foreign_change_to_kuryrs_tables_is_drift() {
        let other = std::process::id().wrapping_add(1);
        assert!(foreign(&transaction("kuryr", NFPROTO_INET, other)));
        assert!(foreign(&transaction("kuryr", NFPROTO_BRIDGE, other)));
        // ... not one to another table or family, nor one of ours
        assert!(!foreign(&transaction("filter", NFPROTO_INET, other)));
        assert!(!foreign(&transaction("kuryr", 2, other)));
        assert!(!foreign(&transaction(
            "kuryr",
            NFPROTO_INET,
            std::process::id()
        )));
        remember_child(other);
        assert!(!foreign(&transaction("kuryr", NFPROTO_INET, other)));
    }

    #[test]
    fn a_child_in_a_pid_namespace_is_known_by_its_port_id() {
        // In a container the kernel names the child by its pid outside (unknown here);
        // its socket's port id is the pid this process saw.
        let (outside, inside) = (std::process::id().wrapping_add(1000), 4242u32);
        let mut d = transaction("kuryr", NFPROTO_INET, outside);
        let gen_at = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
        assert!(foreign(&d), "control: an unknown pid and no port id");
        d[gen_at + 12..gen_at + 16].copy_from_slice(&inside.to_ne_bytes());
        assert!(foreign(&d), "control: a port id that is no child of ours");
        remember_child(inside);
        assert!(!foreign(&d));
    }

    #[test]
    fn truncated_input_is_ignored() {
        let d = transaction("kuryr", NFPROTO_INET, 1);
        for cut in 0..d.len() {
            let _ = parse(&d[..cut]);
        }
        assert_eq!(
            parse(&d[..20]),
            vec![],
            "a message cut short is not read past its end"
        );
    }
}
