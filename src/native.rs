//! The native protocol on a shard: the QUIC endpoint's frames turned into ingress requests
//! and egress subscriptions, and their outcomes turned back into frames.
//!
//! A connection must open with a `Hello` carrying the node's client token; the answer is a
//! `Welcome` with the cluster map, or a `Refused` and the end of the connection. Every
//! request runs as its own task, so a connection has many in flight; its reply is sent when
//! its outcome is durable. A `Snapshot` (an operator's "checkpoint this shard now") runs on
//! its own task too, so a checkpoint of seconds holds up no request; at most one checkpoint
//! runs at a time, and the snapshot requests that arrive meanwhile share the next one. A frame
//! that does not decode closes its connection with the reason, and nothing else.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use rkyv::util::AlignedVec;
use statefun_core::{Address, Error, Outcome, TypeName, TypedValue, Want};
use statefun_net::frame::{self, Kind};
use statefun_net::limits as net_limits;
use statefun_net::server::{Command, ConnectionId, Endpoint, Event};

use crate::limits::snapshots_waiting_per_connection_max;
use crate::rt::{self, LocalSender};
use crate::shard::ShardNode;

/// What a shard serves its native clients with.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    pub token: String,
    /// The cluster map sent in every `Welcome`.
    pub shards: Vec<frame::ShardEndpoint>,
    pub call_timeout: Duration,
}

/// One egress subscription of a connection.
#[derive(Debug)]
struct Subscription {
    connection: ConnectionId,
    id: u64,
    egress: String,
    next: u64,
}

/// The shard's snapshot requests: at most one checkpoint runs at a time, and requests that
/// arrive while it runs wait for the next one, which starts after all of them arrived (a
/// checkpoint already under way may not hold what a later requester wrote before asking).
#[derive(Debug, Default)]
struct Snapshots {
    running: bool,
    /// Waiting for the next checkpoint: the connection and the request's id.
    waiting: Vec<(ConnectionId, u64)>,
}

/// Serves the endpoint's connections for as long as the shard lives.
pub async fn serve(node: Rc<ShardNode>, endpoint: Endpoint, config: NativeConfig) {
    let Endpoint { events, commands, .. } = endpoint;
    let commands = Rc::new(commands);
    let config = Rc::new(config);
    let subscriptions: Rc<RefCell<Vec<Subscription>>> = Rc::default();
    let snapshots: Rc<RefCell<Snapshots>> = Rc::default();
    {
        let (node, commands, subscriptions) = (node.clone(), commands.clone(), subscriptions.clone());
        rt::spawn_local(async move { deliver_egress(node, commands, subscriptions).await }).detach();
    }
    let mut welcomed: HashSet<ConnectionId> = HashSet::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Closed { connection } => {
                welcomed.remove(&connection);
                subscriptions.borrow_mut().retain(|subscription| subscription.connection != connection);
                snapshots.borrow_mut().waiting.retain(|(waiting, _)| *waiting != connection);
            }
            Event::Frame { connection, kind, payload } => {
                let close = |reason: String| {
                    let _ = commands.try_send(Command::Close { connection, reason });
                };
                if !welcomed.contains(&connection) {
                    match hello(&config, node.id.0, kind, &payload) {
                        Ok(welcome) => {
                            welcomed.insert(connection);
                            let _ = commands.try_send(Command::Send { connection, frame: welcome });
                        }
                        Err(reason) => {
                            let refused = frame::encode(Kind::Refused, &frame::Refused { reason: reason.clone() });
                            let _ = commands.try_send(Command::Send { connection, frame: refused });
                            close(reason);
                        }
                    }
                    continue;
                }
                match kind {
                    Kind::Request => match frame::decode::<frame::Request>(kind, &payload) {
                        Ok(request) => {
                            let (node, commands, config) = (node.clone(), commands.clone(), config.clone());
                            rt::spawn_local(async move {
                                answer(&node, &commands, connection, request, config.call_timeout).await
                            })
                            .detach();
                        }
                        Err(error) => close(format!("bad frame: {error}")),
                    },
                    Kind::Subscribe => match frame::decode::<frame::Subscribe>(kind, &payload) {
                        Ok(subscribe) => {
                            let mut subscriptions = subscriptions.borrow_mut();
                            let held = subscriptions.iter().filter(|held| held.connection == connection).count();
                            if held >= net_limits::subscriptions_per_connection_max {
                                close(format!(
                                    "more than {} subscriptions",
                                    net_limits::subscriptions_per_connection_max
                                ));
                                continue;
                            }
                            let next = subscribe.from.max(node.egress.borrow().first());
                            subscriptions.push(Subscription {
                                connection,
                                id: subscribe.id,
                                egress: subscribe.egress,
                                next,
                            });
                            node.egress.borrow().signal.notify();
                        }
                        Err(error) => close(format!("bad frame: {error}")),
                    },
                    Kind::Snapshot => match frame::decode::<frame::Snapshot>(kind, &payload) {
                        Ok(snapshot) => ask_snapshot(&node, &commands, &snapshots, connection, snapshot.id),
                        Err(error) => close(format!("bad frame: {error}")),
                    },
                    other => close(format!("a client does not send {other:?} frames")),
                }
            }
        }
    }
}

/// Checks a connection's first frame; returns the `Welcome` frame or why not.
fn hello(config: &NativeConfig, shard: u16, kind: Kind, payload: &AlignedVec) -> Result<Vec<u8>, String> {
    if kind != Kind::Hello {
        return Err(format!("unauthenticated: the first frame must be a Hello with the client token, not {kind:?}"));
    }
    let hello = frame::decode::<frame::Hello>(kind, payload).map_err(|error| format!("bad frame: {error}"))?;
    if hello.token != config.token {
        return Err(
            "unauthenticated: the client token is wrong (it is in the node's data directory, tls/client-token)".into(),
        );
    }
    Ok(frame::encode(Kind::Welcome, &frame::Welcome { shard, shards: config.shards.clone() }))
}

/// Runs one request and sends its reply.
async fn answer(
    node: &Rc<ShardNode>,
    commands: &LocalSender<Command>,
    connection: ConnectionId,
    request: frame::Request,
    call_timeout: Duration,
) {
    let outcome = match target_and_value(&request) {
        Err(error) => frame::Outcome::Refused { reason: error.to_string(), retry: false },
        Ok((target, value)) => {
            let want = match request.want {
                frame::Want::Admission => Want::Admission,
                frame::Want::Answer => Want::Answer,
            };
            if node.registry.contains(&target.function) {
                let mut exchange = node.ingress(target.clone(), value, want, Some(&request.key));
                match rt::timeout(call_timeout, exchange.outcome()).await {
                    Some(outcome) => outcome_frame(outcome),
                    None => frame::Outcome::Refused {
                        reason: format!("no outcome from {target} within {} ms", call_timeout.as_millis()),
                        retry: true,
                    },
                }
            } else {
                frame::Outcome::Refused { reason: Error::UnknownFunction(target.function).to_string(), retry: false }
            }
        }
    };
    let reply = frame::encode(Kind::Reply, &frame::Reply { id: request.id, outcome });
    let _ = commands.try_send(Command::Send { connection, frame: reply });
    let _ = commands.try_send(Command::Done { connection });
}

/// Queues a snapshot request for the next checkpoint, and starts the checkpoints' task if
/// none runs.
fn ask_snapshot(
    node: &Rc<ShardNode>,
    commands: &Rc<LocalSender<Command>>,
    snapshots: &Rc<RefCell<Snapshots>>,
    connection: ConnectionId,
    id: u64,
) {
    let (queued, start) = {
        let mut state = snapshots.borrow_mut();
        let held = state.waiting.iter().filter(|(waiting, _)| *waiting == connection).count();
        if held >= snapshots_waiting_per_connection_max {
            (false, false)
        } else {
            state.waiting.push((connection, id));
            (true, !std::mem::replace(&mut state.running, true))
        }
    };
    if !queued {
        let why = format!(
            "{}: more than {snapshots_waiting_per_connection_max} snapshot requests of this connection are waiting",
            node.id
        );
        let answer =
            frame::encode(Kind::Snapshotted, &frame::Snapshotted { id, outcome: frame::SnapshotOutcome::Failed(why) });
        let _ = commands.try_send(Command::Send { connection, frame: answer });
        return;
    }
    // Started with no borrow held: the task may run at once.
    if start {
        let (node, commands, snapshots) = (node.clone(), commands.clone(), snapshots.clone());
        rt::spawn_local(async move { take_snapshots(node, commands, snapshots).await }).detach();
    }
}

/// Takes checkpoints, one after another, while snapshot requests wait; answers each request
/// with the outcome of the first checkpoint that started after it arrived.
async fn take_snapshots(node: Rc<ShardNode>, commands: Rc<LocalSender<Command>>, snapshots: Rc<RefCell<Snapshots>>) {
    loop {
        let batch = {
            let mut state = snapshots.borrow_mut();
            if state.waiting.is_empty() {
                state.running = false;
                return;
            }
            std::mem::take(&mut state.waiting)
        };
        let outcome = match node.snapshot_now().await {
            Ok(checkpoint) => frame::SnapshotOutcome::Done {
                generation: checkpoint.generation,
                lsn: checkpoint.lsn,
                chunks: checkpoint.chunks,
                bytes: checkpoint.bytes,
                states: checkpoint.states,
                base: checkpoint.base,
            },
            Err(why) => frame::SnapshotOutcome::Failed(why),
        };
        // A connection closed meanwhile is gone from the endpoint: its answer goes nowhere.
        for (connection, id) in batch {
            let answer = frame::Snapshotted { id, outcome: outcome.clone() };
            let _ = commands.try_send(Command::Send { connection, frame: frame::encode(Kind::Snapshotted, &answer) });
        }
    }
}

fn target_and_value(request: &frame::Request) -> Result<(Address, TypedValue), Error> {
    let target = Address::new(TypeName::parse(&request.function)?, &request.target_id)?;
    let value = TypedValue::new(TypeName::parse(&request.typename)?, request.value.clone());
    Ok((target, value))
}

fn outcome_frame(outcome: Outcome) -> frame::Outcome {
    match outcome {
        Outcome::Admitted => frame::Outcome::Admitted,
        Outcome::Reply(value) => {
            frame::Outcome::Reply { typename: value.typename.to_string(), value: value.value.to_vec() }
        }
        Outcome::Failed(why) => frame::Outcome::Failed(why),
        Outcome::Refused(error @ (Error::MailboxFull { .. } | Error::Poisoned(_))) => {
            frame::Outcome::Refused { reason: error.to_string(), retry: true }
        }
        Outcome::Refused(error) => frame::Outcome::Refused { reason: error.to_string(), retry: false },
    }
}

/// Sends every subscription the committed egress records it has not seen yet.
async fn deliver_egress(
    node: Rc<ShardNode>,
    commands: Rc<LocalSender<Command>>,
    subscriptions: Rc<RefCell<Vec<Subscription>>>,
) {
    let signal = node.egress.borrow().signal.clone();
    loop {
        signal.wait().await;
        let egress = node.egress.borrow();
        for subscription in subscriptions.borrow_mut().iter_mut() {
            subscription.next = subscription.next.max(egress.first());
            while let Some(record) = egress.get(subscription.next) {
                if record.egress.as_str() == subscription.egress {
                    let frame = frame::Egress {
                        id: subscription.id,
                        position: subscription.next,
                        typename: record.value.typename.to_string(),
                        value: record.value.value.to_vec(),
                    };
                    let command = Command::Send {
                        connection: subscription.connection,
                        frame: frame::encode(Kind::Egress, &frame),
                    };
                    let _ = commands.try_send(command);
                }
                subscription.next += 1;
            }
        }
    }
}
