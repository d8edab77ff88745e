//! The background task: owns the connections and every sealed batch until it is acked or failed
//! in every group.
//!
//! ```text
//!  publish ──▶ Batcher ──sealed──▶ ┌────────────┐ ──Bytes──▶ connection task ──▶ worker
//!                                  │ Dispatcher │ ◀──ConnEvent (up/ack/reject/goodbye/down)──
//!  flush/close ──Command─────────▶ └────────────┘ ──▶ Stats, DeliveryReport, buffer release
//! ```
//!
//! Per group, each batch is in one of four states: pending (in the group's queue), in flight on
//! one member, split for this group alone (waiting for its parts, below), or done (acked or
//! failed). A member that fails (connect/write error, ERROR, heartbeat, ack timeout) is backed
//! off and its in-flight batches go back to the front of the queue, marked to avoid that member
//! while another is healthy.
//!
//! A batch is sent only to a member whose announced limits (WELCOME's `max_batch_events`,
//! `max_frame_len`) admit it. One that every healthy member of some group declines — sealed
//! before a smaller-limit worker was heard from — is split into parts that fit, under fresh
//! seqs, if it was never sent in any group (so its own seq can never be committed). One already
//! sent in another group is split for that group alone, if never sent there: groups are separate
//! clusters, so the group never sees its seq, and its slot there waits for the parts. Otherwise
//! (one event, or sent in that group already) it is parked in the group until a member that
//! admits it comes up (or its delivery deadline).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::backoff_delay;
use crate::batch::{BatchLimits, SchemaSource, SealedBatch};
use crate::client::Shared;
use crate::connection::{self, ConnError, ConnEvent, ConnEventKind, ConnParams};
use crate::endpoint::{Cursor, GroupMode, MemberView, pick};
use crate::protocol::{Hello, PROTOCOL_VERSION, ProtocolError, RejectCode};
use crate::report::{DeliveryReport, Outcome};
use crate::stats::{Counters, EndpointState, FAILED_CLOSED, FAILED_DEADLINE, FAILED_REJECTED};

/// Requests from the publisher handle.
#[derive(Debug)]
pub(crate) enum Command {
    /// A sealed batch to deliver.
    Batch(SealedBatch),
    /// Reply once every batch with a smaller sequence number is acked or failed.
    Flush {
        upto: u64,
        done: oneshot::Sender<()>,
    },
    /// Fail what is left as `closed`, close the connections, reply with the failed event count
    /// and stop.
    Shutdown { done: oneshot::Sender<u64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Pending {
        avoid: Option<usize>,
        sends: u32,
    },
    InFlight {
        member: usize,
        sends: u32,
    },
    /// Split for this group alone: waiting for this many of its parts to be resolved.
    Split {
        left: usize,
    },
    Done,
}

#[derive(Debug)]
struct InBatch {
    batch: SealedBatch,
    /// One per group.
    slots: Vec<Slot>,
    unresolved: usize,
    /// Groups that have it in flight, plus its parts in flight (a batch split for one group).
    in_flight_groups: usize,
    /// Failed in some group as a whole: none of its events count as acked.
    failed: bool,
    /// Events of its parts (split for one group) that failed there: not counted as acked.
    failed_part_events: u64,
    /// A part of a batch split for one group alone: (that batch's seq, the group). Its buffer
    /// room, `acked` and `in_flight` counts are its batch's; it is a batch of its own for the
    /// `batches`, endpoint and `failed` counts and in delivery reports.
    whole: Option<(u64, usize)>,
}

/// Whether a batch was never sent in any group (so its seq can be given up for parts'). Never
/// true of a part split for one group (done in the others): it can only be split again there.
fn never_sent(b: &InBatch) -> bool {
    b.slots
        .iter()
        .all(|s| matches!(s, Slot::Pending { sends: 0, .. }))
}

impl InBatch {
    /// A batch pending in each of `groups` groups.
    fn new(batch: SealedBatch, groups: usize) -> InBatch {
        InBatch {
            batch,
            slots: vec![
                Slot::Pending {
                    avoid: None,
                    sends: 0
                };
                groups
            ],
            unresolved: groups,
            in_flight_groups: 0,
            failed: false,
            failed_part_events: 0,
            whole: None,
        }
    }

    /// A part of batch `whole` for group `g` alone (done in every other group).
    fn part_for_group(part: SealedBatch, groups: usize, g: usize, whole: u64) -> InBatch {
        let mut b = InBatch::new(part, groups);
        for (i, slot) in b.slots.iter_mut().enumerate() {
            if i != g {
                *slot = Slot::Done;
            }
        }
        b.unresolved = 1;
        b.whole = Some((whole, g));
        b
    }
}

#[derive(Debug)]
struct Group {
    mode: GroupMode,
    /// Global member indices.
    members: Vec<usize>,
    cursor: Cursor,
    pending: VecDeque<u64>,
    /// Batches no healthy member admits and that cannot be split (sent in this group already, or
    /// one event): back to the front of `pending` when a member of the group comes up.
    parked: Vec<u64>,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Member {
    group: usize,
    state: EndpointState,
    conn: Option<Conn>,
    /// seq → when it was sent.
    in_flight: HashMap<u64, Instant>,
    /// The last sign of progress on the current connection: connected, or an ACK/REJECT.
    last_progress: Instant,
    attempt: u32,
    retry_at: Option<Instant>,
    node_id: String,
    /// What the worker announced in its last WELCOME.
    limits: Option<BatchLimits>,
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    groups: Vec<Group>,
    members: Vec<Member>,
    batches: BTreeMap<u64, InBatch>,
    /// Parts of split batches: part seq → the seq of the batch first sealed (what flushes and
    /// deadlines go by, as parts have later seqs).
    parts: BTreeMap<u64, u64>,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    conn_tx: mpsc::UnboundedSender<ConnEvent>,
    next_conn: u64,
    reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    last_deadline_scan: Instant,
}

impl Dispatcher {
    pub(crate) fn new(
        shared: Arc<Shared>,
        reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
        tracker: TaskTracker,
        cancel: CancellationToken,
        conn_tx: mpsc::UnboundedSender<ConnEvent>,
    ) -> Dispatcher {
        let mut groups = Vec::new();
        let mut members = Vec::new();
        for (g, group) in shared.settings.url_set.groups.iter().enumerate() {
            let mut indices = Vec::new();
            for _ in &group.members {
                indices.push(members.len());
                members.push(Member {
                    group: g,
                    state: EndpointState::Connecting,
                    conn: None,
                    in_flight: HashMap::new(),
                    last_progress: Instant::now(),
                    attempt: 0,
                    retry_at: None,
                    node_id: String::new(),
                    limits: None,
                });
            }
            // Each publisher starts its round-robin at a random member, so gateways started
            // together do not all send their first turns to the same worker.
            let first = rand::random_range(0..indices.len().max(1));
            groups.push(Group {
                mode: group.mode,
                members: indices,
                cursor: Cursor {
                    member: first,
                    taken: 0,
                },
                pending: VecDeque::new(),
                parked: Vec::new(),
            });
        }
        Dispatcher {
            shared,
            groups,
            members,
            batches: BTreeMap::new(),
            parts: BTreeMap::new(),
            flushes: Vec::new(),
            conn_tx,
            next_conn: 0,
            reports,
            tracker,
            cancel,
            last_deadline_scan: Instant::now(),
        }
    }

    /// Runs until shut down or cancelled.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut conn_events: mpsc::UnboundedReceiver<ConnEvent>,
    ) {
        for m in 0..self.members.len() {
            self.connect(m);
        }
        let settings = &self.shared.settings;
        let period =
            (settings.linger / 2).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cancel = self.cancel.clone();
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    self.shutdown(&mut commands);
                    return;
                }
                Some(ev) = conn_events.recv() => self.on_conn_event(ev),
                cmd = commands.recv() => match cmd {
                    None => {
                        self.shutdown(&mut commands);
                        return;
                    }
                    Some(Command::Batch(b)) => self.add_batch(b),
                    Some(Command::Flush { upto, done }) => self.flushes.push((upto, done)),
                    Some(Command::Shutdown { done }) => {
                        let undelivered = self.shutdown(&mut commands);
                        let _ = done.send(undelivered);
                        return;
                    }
                },
                _ = tick.tick() => self.housekeeping(Instant::now()),
            }
            self.dispatch();
            self.check_flushes();
        }
    }

    fn connect(&mut self, m: usize) {
        let settings = &self.shared.settings;
        let group = self.members[m].group;
        let index = self.groups[group]
            .members
            .iter()
            .position(|&x| x == m)
            .unwrap_or(0);
        let endpoint = settings.url_set.groups[group].members[index].clone();
        self.next_conn += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = self.cancel.child_token();
        let params = ConnParams {
            member: m,
            conn: self.next_conn,
            endpoint,
            hello: Hello {
                version: PROTOCOL_VERSION,
                publisher_id: settings.publisher_id.clone(),
                auth_token: settings.auth_token.clone(),
                client_name: settings.client_name.clone(),
            },
            connect_timeout: settings.connect_timeout,
            tls: settings.tls.clone(),
            heartbeat_interval: settings.heartbeat_interval,
            events: self.conn_tx.clone(),
            cancel: cancel.clone(),
        };
        let member = &mut self.members[m];
        member.conn = Some(Conn {
            id: self.next_conn,
            tx,
            cancel,
        });
        member.state = EndpointState::Connecting;
        member.retry_at = None;
        self.shared.endpoints[m].update(|i| i.state = EndpointState::Connecting);
        self.tracker.spawn(connection::run(params, rx));
    }

    fn add_batch(&mut self, batch: SealedBatch) {
        Counters::add(&self.shared.counters.batches, 1);
        let seq = batch.seq;
        let n = self.groups.len();
        for g in &mut self.groups {
            g.pending.push_back(seq);
        }
        self.batches.insert(seq, InBatch::new(batch, n));
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        let m = ev.member;
        let current = self.members[m]
            .conn
            .as_ref()
            .is_some_and(|c| c.id == ev.conn);
        if current
            && matches!(
                ev.kind,
                ConnEventKind::Ack(_) | ConnEventKind::Reject { .. } | ConnEventKind::Up(_)
            )
        {
            self.members[m].last_progress = Instant::now();
        }
        match ev.kind {
            // An ack means the batch is committed, whichever connection it comes from.
            ConnEventKind::Ack(seq) => self.on_ack(m, seq),
            ConnEventKind::Reject { seq, code, reason } => self.on_reject(m, seq, code, &reason),
            _ if !current => {}
            ConnEventKind::Up(welcome) => {
                let member = &mut self.members[m];
                member.state = EndpointState::Connected;
                member.attempt = 0;
                member.node_id.clone_from(&welcome.node_id);
                let limits =
                    BatchLimits::announced(welcome.max_frame_len, welcome.max_batch_events);
                member.limits = Some(limits);
                let group = &mut self.groups[member.group];
                for seq in group.parked.drain(..).rev() {
                    group.pending.push_front(seq);
                }
                let cell = &self.shared.endpoints[m];
                Counters::add(&cell.connects, 1);
                cell.update(|i| {
                    i.state = EndpointState::Connected;
                    i.node_id = Some(welcome.node_id.clone());
                    i.shard_id = Some(welcome.shard_id.clone());
                });
                let mut open = self.shared.lock_open();
                let batcher = &mut open.batcher;
                batcher.apply_peer_limits(limits);
                for schema in welcome.streams {
                    let name = schema.name.clone();
                    if !batcher.add_schema(schema, SchemaSource::Learned) {
                        tracing::warn!(
                            stream = %name,
                            node_id = %welcome.node_id,
                            "worker announced a different schema for this stream than another \
                             worker; keeping the first"
                        );
                    }
                }
            }
            ConnEventKind::Goodbye(reason) => {
                self.members[m].state = EndpointState::Draining;
                Counters::add(&self.shared.counters.failed_over, 1);
                self.shared.endpoints[m].update(|i| {
                    i.state = EndpointState::Draining;
                    i.last_error = Some(format!("goodbye: {reason}"));
                });
                if self.members[m].in_flight.is_empty() {
                    self.fail_member(m, ConnError::Local, Instant::now());
                }
            }
            ConnEventKind::Down(err) => self.member_down(m, err, Instant::now()),
        }
    }

    /// Removes `seq` from its holder in group `g` and marks the slot done. Returns the batch's
    /// events when the slot was not done yet.
    fn resolve_slot(&mut self, seq: u64, g: usize) -> Option<u32> {
        let b = self.batches.get_mut(&seq)?;
        let slot = b.slots.get_mut(g)?;
        let member = match *slot {
            // A split slot is resolved by its parts (`part_resolved`).
            Slot::Done | Slot::Split { .. } => return None,
            Slot::InFlight { member, .. } => Some(member),
            Slot::Pending { .. } => None,
        };
        *slot = Slot::Done;
        b.unresolved -= 1;
        let events = b.batch.events;
        if let Some(member) = member {
            if self.members[member].in_flight.remove(&seq).is_some() {
                Counters::sub(&self.shared.endpoints[member].in_flight_batches, 1);
            }
            self.in_flight(seq, false);
        }
        Some(events)
    }

    /// One more (`true`) or one fewer group has `seq` in flight. The `in_flight` count holds a
    /// batch's events while some group has it, or some part of it split for one group, in
    /// flight: a part counts as one more group of its batch.
    fn in_flight(&mut self, seq: u64, more: bool) {
        let Some(b) = self.batches.get_mut(&seq) else {
            return;
        };
        let edge = if more {
            b.in_flight_groups += 1;
            b.in_flight_groups == 1
        } else {
            b.in_flight_groups -= 1;
            b.in_flight_groups == 0
        };
        if !edge {
            return;
        }
        match b.whole {
            Some((whole, _)) => self.in_flight(whole, more),
            None if more => Counters::add(&self.shared.counters.in_flight, b.batch.events.into()),
            None => Counters::sub(&self.shared.counters.in_flight, b.batch.events.into()),
        }
    }

    fn on_ack(&mut self, m: usize, seq: u64) {
        let g = self.members[m].group;
        let Some(events) = self.resolve_slot(seq, g) else {
            return;
        };
        let cell = &self.shared.endpoints[m];
        Counters::add(&cell.acked, u64::from(events));
        Counters::add(&cell.acked_batches, 1);
        let node_id = self.members[m].node_id.clone();
        self.report(
            seq,
            g,
            Outcome::Acked {
                node_id,
                at: Instant::now(),
            },
        );
        self.maybe_finish(seq);
        self.maybe_close_draining(m);
    }

    fn on_reject(&mut self, m: usize, seq: u64, code: RejectCode, reason: &str) {
        let g = self.members[m].group;
        let Some(events) = self.resolve_slot(seq, g) else {
            return;
        };
        let detail = format!(
            "batch {seq} of stream {} rejected by {}: {code}: {reason}",
            self.batches.get(&seq).map_or("?", |b| &*b.batch.stream),
            self.shared.endpoints[m].url
        );
        self.shared
            .counters
            .failed(FAILED_REJECTED, detail.clone(), u64::from(events));
        if let Some(b) = self.batches.get_mut(&seq) {
            b.failed = true;
        }
        self.report(
            seq,
            g,
            Outcome::Failed {
                reason: format!("rejected: {code}: {reason}"),
                at: Instant::now(),
            },
        );
        self.maybe_finish(seq);
        self.maybe_close_draining(m);
    }

    fn report(&self, seq: u64, group: usize, outcome: Outcome) {
        let (Some(tx), Some(b)) = (&self.reports, self.batches.get(&seq)) else {
            return;
        };
        let _ = tx.send(DeliveryReport {
            stream: b.batch.stream.to_string(),
            group,
            seq,
            events: b.batch.events,
            published_at: b.batch.published_at.clone(),
            outcome,
        });
    }

    /// Removes a batch resolved in every group and gives its buffer space back.
    fn maybe_finish(&mut self, seq: u64) {
        if self.batches.get(&seq).is_none_or(|b| b.unresolved > 0) {
            return;
        }
        let Some(b) = self.batches.remove(&seq) else {
            return;
        };
        self.parts.remove(&seq);
        if let Some((whole, g)) = b.whole {
            let failed = if b.failed {
                u64::from(b.batch.events)
            } else {
                b.failed_part_events
            };
            self.part_resolved(whole, g, failed);
            return;
        }
        if !b.failed {
            let acked = u64::from(b.batch.events).saturating_sub(b.failed_part_events);
            Counters::add(&self.shared.counters.acked, acked);
        }
        self.shared
            .buffer
            .release(u64::from(b.batch.events), b.batch.event_bytes);
    }

    fn maybe_close_draining(&mut self, m: usize) {
        if self.members[m].state == EndpointState::Draining && self.members[m].in_flight.is_empty()
        {
            self.fail_member(m, ConnError::Local, Instant::now());
        }
    }

    /// Ends the member's connection and treats it as down.
    fn fail_member(&mut self, m: usize, err: ConnError, now: Instant) {
        if let Some(conn) = &self.members[m].conn {
            conn.cancel.cancel();
        }
        self.member_down(m, err, now);
    }

    fn member_down(&mut self, m: usize, err: ConnError, now: Instant) {
        let was = self.members[m].state;
        let fatal = err.is_fatal();
        let settings = &self.shared.settings;
        let delay = backoff_delay(
            self.members[m].attempt,
            settings.backoff_min,
            settings.backoff_max,
            rand::random::<f64>(),
        );
        let member = &mut self.members[m];
        member.conn = None;
        member.attempt = member.attempt.saturating_add(1);
        let state = if fatal || self.cancel.is_cancelled() {
            member.retry_at = None;
            EndpointState::Down
        } else {
            member.retry_at = Some(now + delay);
            EndpointState::BackingOff
        };
        member.state = state;
        let reason = match (&err, was) {
            // A draining member closed by us keeps its goodbye as the last error.
            (ConnError::Local, EndpointState::Draining) => None,
            _ => Some(err.to_string()),
        };
        if matches!(was, EndpointState::Connected) {
            Counters::add(&self.shared.counters.failed_over, 1);
            tracing::warn!(endpoint = %self.shared.endpoints[m].url, error = %err, "worker unhealthy; re-sending its unacked batches");
        } else {
            tracing::debug!(endpoint = %self.shared.endpoints[m].url, error = %err, "connection attempt failed");
        }
        self.shared.endpoints[m].update(|i| {
            i.state = state;
            if reason.is_some() {
                i.last_error = reason;
            }
        });
        self.requeue(m);
    }

    /// Puts the member's in-flight batches back at the front of its group's queue, in order.
    fn requeue(&mut self, m: usize) {
        let mut seqs: Vec<u64> = self.members[m].in_flight.drain().map(|(s, _)| s).collect();
        Counters::sub(
            &self.shared.endpoints[m].in_flight_batches,
            u64::try_from(seqs.len()).unwrap_or(0),
        );
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let g = self.members[m].group;
        for seq in seqs {
            let Some(b) = self.batches.get_mut(&seq) else {
                continue;
            };
            if let Slot::InFlight { member, sends } = b.slots[g]
                && member == m
            {
                b.slots[g] = Slot::Pending {
                    avoid: Some(m),
                    sends,
                };
                self.in_flight(seq, false);
                self.groups[g].pending.push_front(seq);
            }
        }
    }

    /// Sends pending batches to the members with room.
    fn dispatch(&mut self) {
        let max_in_flight = self.shared.settings.max_in_flight_per_connection;
        let turn = self.shared.settings.batches_per_turn;
        let now = Instant::now();
        for g in 0..self.groups.len() {
            while let Some(&seq) = self.groups[g].pending.front() {
                let Some(b) = self.batches.get(&seq) else {
                    self.groups[g].pending.pop_front();
                    continue;
                };
                let Slot::Pending { avoid, sends } = b.slots[g] else {
                    self.groups[g].pending.pop_front();
                    continue;
                };
                // Before its first send anywhere, a batch that some group's healthy members all
                // decline is split for all groups at once; once sent, it can no longer be. (The
                // parts go to the front of the queues; the batch's own entry is skipped later.)
                if never_sent(b) && !self.admitted_in_every_group(&b.batch) && self.split(seq) {
                    continue;
                }
                let Some(b) = self.batches.get(&seq) else {
                    continue;
                };
                let avoid = avoid.and_then(|a| self.groups[g].members.iter().position(|&x| x == a));
                let mut declined = false;
                let views: Vec<MemberView> = self.groups[g]
                    .members
                    .iter()
                    .map(|&i| {
                        let member = &self.members[i];
                        let connected = member.state == EndpointState::Connected;
                        let admits = member.limits.is_some_and(|l| l.admit(&b.batch));
                        declined |= connected && !admits;
                        MemberView {
                            healthy: connected && admits,
                            has_room: member.in_flight.len() < max_in_flight,
                        }
                    })
                    .collect();
                let group = &mut self.groups[g];
                let Some(choice) = pick(group.mode, &views, &mut group.cursor, turn, avoid) else {
                    if declined && !views.iter().any(|v| v.healthy) {
                        // Healthy members, none of which admits this batch, and it was sent in
                        // another group (or it would have been split above): split it for this
                        // group if it was never sent here; else park it until a member that
                        // admits it comes up.
                        if sends == 0 && self.split_for_group(seq, g) {
                            continue;
                        }
                        self.park(seq, g);
                        continue;
                    }
                    break;
                };
                let m = group.members[choice];
                let frame = b.batch.frame.clone();
                let sent = self.members[m]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.tx.send(frame).is_ok());
                if !sent {
                    // The connection task is gone; its Down event is on its way.
                    self.fail_member(m, ConnError::Closed, now);
                    continue;
                }
                self.groups[g].pending.pop_front();
                self.members[m].in_flight.insert(seq, now);
                Counters::add(&self.shared.endpoints[m].in_flight_batches, 1);
                if sends > 0 {
                    Counters::add(&self.shared.counters.retried, 1);
                }
                if let Some(b) = self.batches.get_mut(&seq) {
                    b.slots[g] = Slot::InFlight {
                        member: m,
                        sends: sends + 1,
                    };
                    self.in_flight(seq, true);
                }
            }
        }
    }

    /// Whether, in every group with a healthy member, some healthy member admits `b`.
    fn admitted_in_every_group(&self, b: &SealedBatch) -> bool {
        self.groups.iter().all(|group| {
            let mut healthy = group
                .members
                .iter()
                .map(|&i| &self.members[i])
                .filter(|m| m.state == EndpointState::Connected)
                .peekable();
            healthy.peek().is_none() || healthy.any(|m| m.limits.is_some_and(|l| l.admit(b)))
        })
    }

    /// Replaces a batch that was never sent in any group by parts that every healthy member
    /// admits, at the front of every group's queue. `false` (nothing done) when it was sent
    /// already, is one event, no limits are known, or it fits them whole.
    fn split(&mut self, seq: u64) -> bool {
        let Some(b) = self.batches.get(&seq) else {
            return false;
        };
        // The parts replace the batch in every group: they fit every healthy member.
        let limits = self.healthy_limits(0..self.members.len());
        let Some(limits) = limits.filter(|_| never_sent(b)) else {
            return false;
        };
        let parts = match self.parts_within(&b.batch, limits) {
            Ok(Some(parts)) => parts,
            Ok(None) => return false,
            Err(e) => {
                // Cannot happen: the frame was encoded by this publisher.
                self.fail_batch(seq, FAILED_REJECTED, &|| {
                    format!("could not be split to fit a worker's limits: {e}")
                });
                return true;
            }
        };
        let Some(whole) = self.batches.remove(&seq) else {
            return false;
        };
        let origin = self.parts.remove(&seq).unwrap_or(seq);
        tracing::debug!(
            seq,
            events = whole.batch.events,
            parts = parts.len(),
            "batch split to fit the limits a worker announced"
        );
        Counters::add(
            &self.shared.counters.batches,
            u64::try_from(parts.len() - 1).unwrap_or(0),
        );
        let n = self.groups.len();
        for part in parts.into_iter().rev() {
            let part_seq = part.seq;
            for group in &mut self.groups {
                group.pending.push_front(part_seq);
            }
            self.parts.insert(part_seq, origin);
            self.batches.insert(part_seq, InBatch::new(part, n));
        }
        true
    }

    /// Replaces the batch at the front of group `g`'s queue, in `g` only, by parts that every
    /// healthy member of `g` admits, under fresh seqs (`g` is a cluster of its own and never saw
    /// the batch's). The batch's slot in `g` waits for the parts (`part_resolved`). `false`
    /// (nothing done) when it fits whole or is one event.
    fn split_for_group(&mut self, seq: u64, g: usize) -> bool {
        let limits = self.healthy_limits(self.groups[g].members.iter().copied());
        let (Some(limits), Some(b)) = (limits, self.batches.get(&seq)) else {
            return false;
        };
        // An error cannot happen (this publisher encoded the frame): the batch is parked.
        let split = self.parts_within(&b.batch, limits);
        let Ok(Some(parts)) = split.inspect_err(|e| tracing::error!(seq, "could not split: {e}"))
        else {
            return false;
        };
        tracing::debug!(
            seq,
            group = g,
            events = b.batch.events,
            parts = parts.len(),
            "batch split for one group to fit the limits its workers announced"
        );
        Counters::add(
            &self.shared.counters.batches,
            u64::try_from(parts.len()).unwrap_or(0),
        );
        let origin = self.parts.get(&seq).copied().unwrap_or(seq);
        if let Some(b) = self.batches.get_mut(&seq) {
            b.slots[g] = Slot::Split { left: parts.len() };
        }
        self.groups[g].pending.pop_front();
        let n = self.groups.len();
        for part in parts.into_iter().rev() {
            let part_seq = part.seq;
            self.groups[g].pending.push_front(part_seq);
            self.parts.insert(part_seq, origin);
            self.batches
                .insert(part_seq, InBatch::part_for_group(part, n, g, seq));
        }
        true
    }

    /// `batch` re-encoded as parts within `limits` (`None`: it is one event, or fits whole).
    fn parts_within(
        &self,
        batch: &SealedBatch,
        limits: BatchLimits,
    ) -> Result<Option<Vec<SealedBatch>>, ProtocolError> {
        if batch.events <= 1 {
            return Ok(None);
        }
        let parts = self.shared.lock_open().batcher.split(batch, limits)?;
        Ok(Some(parts).filter(|p| p.len() > 1))
    }

    /// The tightest limits the connected ones of `members` announced (`None`: none is).
    fn healthy_limits(&self, members: impl Iterator<Item = usize>) -> Option<BatchLimits> {
        members
            .map(|i| &self.members[i])
            .filter(|m| m.state == EndpointState::Connected)
            .filter_map(|m| m.limits)
            .reduce(BatchLimits::min)
    }

    /// One part of batch `whole` (split for group `g` alone) is resolved, its `failed_events`
    /// failed: the batch's slot in `g` is done with the last one. What its failed parts held is
    /// not counted as acked when the batch is.
    fn part_resolved(&mut self, whole: u64, g: usize, failed_events: u64) {
        let Some(b) = self.batches.get_mut(&whole) else {
            return;
        };
        b.failed_part_events += failed_events;
        if let Slot::Split { left } = &mut b.slots[g] {
            *left -= 1;
            if *left == 0 {
                b.slots[g] = Slot::Done;
                b.unresolved -= 1;
            }
        }
        self.maybe_finish(whole);
    }

    /// Takes the batch at the front of group `g`'s queue aside until a member of the group
    /// comes up.
    fn park(&mut self, seq: u64, g: usize) {
        if let Some(b) = self.batches.get(&seq) {
            tracing::warn!(
                seq,
                events = b.batch.events,
                bytes = b.batch.frame.len(),
                "no healthy worker accepts a batch this large (max_batch_events / \
                 max_frame_len); it waits for one that does"
            );
        }
        self.groups[g].pending.pop_front();
        self.groups[g].parked.push(seq);
    }

    fn housekeeping(&mut self, now: Instant) {
        let settings = &self.shared.settings;
        let linger = settings.linger;
        let ack_timeout = settings.ack_timeout;
        // Linger: the sealed batches come back through the command channel, in seal order.
        {
            let shared = Arc::clone(&self.shared);
            shared
                .lock_open()
                .batcher
                .seal_lingering(now, linger, &mut |b| shared.send_batch(b));
        }
        // Ack timeouts: a batch older than the timeout, and nothing acked meanwhile. A worker
        // that acks steadily is alive however deep its queue; one that acks nothing is not.
        for m in 0..self.members.len() {
            let member = &self.members[m];
            if matches!(
                member.state,
                EndpointState::Connected | EndpointState::Draining
            ) && now.saturating_duration_since(member.last_progress) >= ack_timeout
                && member
                    .in_flight
                    .values()
                    .any(|&sent| now.saturating_duration_since(sent) >= ack_timeout)
            {
                self.fail_member(m, ConnError::AckTimeout(ack_timeout), now);
            }
        }
        // Reconnects.
        for m in 0..self.members.len() {
            if self.members[m].state == EndpointState::BackingOff
                && self.members[m].retry_at.is_some_and(|t| t <= now)
            {
                self.connect(m);
            }
        }
        // Delivery deadline, at most every 50 ms.
        if now.saturating_duration_since(self.last_deadline_scan) >= Duration::from_millis(50) {
            self.last_deadline_scan = now;
            self.expire(now);
        }
    }

    /// Fails every batch older than the delivery deadline.
    ///
    /// A batch is sealed at most `linger` (plus a tick) after it opened and sequence numbers
    /// follow seal order, so the scan stops at the first batch comfortably inside the deadline.
    fn expire(&mut self, now: Instant) {
        let settings = &self.shared.settings;
        let deadline = settings.delivery_deadline;
        let slack = settings.linger + Duration::from_millis(100);
        let mut expired = Vec::new();
        for (&seq, b) in &self.batches {
            let age = now.saturating_duration_since(b.batch.opened_at);
            if age >= deadline {
                expired.push(seq);
            } else if age + slack < deadline {
                break;
            }
        }
        // Parts of split batches have later seqs than batches sealed after theirs.
        for &seq in self.parts.keys() {
            if self
                .batches
                .get(&seq)
                .is_some_and(|b| now.saturating_duration_since(b.batch.opened_at) >= deadline)
                && !expired.contains(&seq)
            {
                expired.push(seq);
            }
        }
        for seq in expired {
            self.fail_batch(seq, FAILED_DEADLINE, &|| {
                format!("not acked within the delivery deadline of {deadline:?}")
            });
        }
    }

    /// The events of `seq` not yet delivered to every group: all of them, unless it waits only
    /// for parts split for one group (then theirs); none for a part (counted with its batch).
    fn undelivered(&self, seq: u64) -> u64 {
        let Some(b) = self.batches.get(&seq).filter(|b| b.whole.is_none()) else {
            return 0;
        };
        let waits_for_itself = b
            .slots
            .iter()
            .any(|s| matches!(s, Slot::Pending { .. } | Slot::InFlight { .. }));
        if waits_for_itself {
            return u64::from(b.batch.events);
        }
        self.parts_for_groups(seq)
            .iter()
            .filter_map(|p| self.batches.get(p))
            .map(|p| u64::from(p.batch.events))
            .sum()
    }

    /// The parts still open of batch `seq`, split for one group alone (none unless some slot of
    /// it is split).
    fn parts_for_groups(&self, seq: u64) -> Vec<u64> {
        let split = self
            .batches
            .get(&seq)
            .is_some_and(|b| b.slots.iter().any(|s| matches!(s, Slot::Split { .. })));
        if !split {
            return Vec::new();
        }
        self.parts
            .keys()
            .copied()
            .filter(|p| {
                self.batches
                    .get(p)
                    .is_some_and(|b| b.whole.is_some_and(|(w, _)| w == seq))
            })
            .collect()
    }

    /// Fails every unresolved group of a batch with `reason`.
    fn fail_batch(&mut self, seq: u64, reason: &str, detail: &dyn Fn() -> String) {
        // A group it was split for fails through its parts (each counted and reported there).
        for part in self.parts_for_groups(seq) {
            self.fail_batch(part, reason, detail);
        }
        let groups = self.groups.len();
        let mut touched = Vec::new();
        for g in 0..groups {
            if let Some(b) = self.batches.get(&seq)
                && let Slot::InFlight { member, .. } = b.slots[g]
            {
                touched.push(member);
            }
            let Some(events) = self.resolve_slot(seq, g) else {
                continue;
            };
            let stream = self
                .batches
                .get(&seq)
                .map_or_else(String::new, |b| b.batch.stream.to_string());
            self.shared.counters.failed(
                reason,
                format!("batch {seq} of stream {stream}: {}", detail()),
                u64::from(events),
            );
            if let Some(b) = self.batches.get_mut(&seq) {
                b.failed = true;
            }
            self.report(
                seq,
                g,
                Outcome::Failed {
                    reason: reason.to_owned(),
                    at: Instant::now(),
                },
            );
        }
        self.maybe_finish(seq);
        for m in touched {
            self.maybe_close_draining(m);
        }
    }

    fn check_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let first_open = self
            .batches
            .keys()
            .next()
            .copied()
            .into_iter()
            .chain(self.parts.values().copied())
            .min();
        let mut i = 0;
        while i < self.flushes.len() {
            if first_open.is_none_or(|s| s >= self.flushes[i].0) {
                let (_, done) = self.flushes.swap_remove(i);
                let _ = done.send(());
            } else {
                i += 1;
            }
        }
    }

    /// Fails everything left as `closed`, ends the connections; returns the events failed.
    fn shutdown(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> u64 {
        self.cancel.cancel();
        // Nothing may vanish uncounted: take the open batches and whatever is still queued.
        {
            let shared = Arc::clone(&self.shared);
            shared.seal_all_returning_credit(&mut shared.lock_open());
        }
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Batch(b) => self.add_batch(b),
                Command::Flush { done, .. } => self.flushes.push((u64::MAX, done)),
                Command::Shutdown { done } => {
                    let _ = done.send(0);
                }
            }
        }
        let seqs: Vec<u64> = self.batches.keys().copied().collect();
        let mut undelivered = 0;
        for seq in seqs {
            undelivered += self.undelivered(seq);
            self.fail_batch(seq, FAILED_CLOSED, &|| {
                "the publisher was closed".to_owned()
            });
        }
        for m in 0..self.members.len() {
            self.members[m].conn = None;
            self.members[m].state = EndpointState::Down;
            self.shared.endpoints[m].update(|i| i.state = EndpointState::Down);
        }
        for (_, done) in self.flushes.drain(..) {
            let _ = done.send(());
        }
        undelivered
    }
}
