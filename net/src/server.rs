//! One QUIC endpoint per shard: quinn-proto (sans-I/O) driven from a glommio UDP socket.
//!
//! The driver task owns the endpoint and its connections. A receive task that is never
//! cancelled feeds it datagrams (dropping glommio's `recv_from` mid-flight can lose one). Each
//! connection carries one bidirectional stream, opened by the client, with frames both ways.
//! The driver cuts the stream into frames, checks their headers, and hands them to the shard
//! as [`Event`]s; the shard answers with [`Command`]s. A bad frame closes its connection with
//! the reason and touches nothing else. While a connection has
//! `requests_in_flight_per_connection_max` requests in flight, its stream is not read:
//! QUIC's flow control pushes back to the client.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::UdpSocket;
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event as QuicEvent, StreamEvent, StreamId};
use rkyv::util::AlignedVec;

use crate::frame::{self, Kind};
use crate::limits;

/// A connection, numbered by the endpoint.
pub type ConnectionId = u64;

/// What the endpoint tells its shard.
#[derive(Debug)]
pub enum Event {
    /// A whole frame whose header checked out; the payload is still unchecked.
    Frame { connection: ConnectionId, kind: Kind, payload: AlignedVec },
    /// The connection is gone.
    Closed { connection: ConnectionId },
}

/// What the shard tells its endpoint.
#[derive(Debug)]
pub enum Command {
    /// Sends a frame on the connection's stream.
    Send { connection: ConnectionId, frame: Vec<u8> },
    /// A request of the connection is done (its reply was sent): one fewer in flight.
    Done { connection: ConnectionId },
    /// Closes the connection, telling the peer why.
    Close { connection: ConnectionId, reason: String },
}

/// Application error codes in QUIC CONNECTION_CLOSE frames.
pub const CLOSE_NORMAL: u32 = 0;
pub const CLOSE_PROTOCOL: u32 = 1;

struct Connection {
    id: ConnectionId,
    quic: quinn_proto::Connection,
    stream: Option<StreamId>,
    reader: frame::Reader,
    outgoing: VecDeque<Bytes>,
    outgoing_bytes: usize,
    in_flight: usize,
}

/// The shard's handle on its endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub events: LocalReceiver<Event>,
    pub commands: LocalSender<Command>,
    pub local_address: SocketAddr,
}

/// Binds `address` and starts the endpoint's tasks on the current executor. `reset_key` is
/// the secret behind stateless resets; keep it across restarts.
pub fn start(
    address: SocketAddr,
    config: Arc<quinn_proto::ServerConfig>,
    reset_key: &[u8],
) -> std::io::Result<Endpoint> {
    let socket = std::rc::Rc::new(UdpSocket::bind(address).map_err(std::io::Error::from)?);
    let local_address = socket.local_addr().map_err(std::io::Error::from)?;
    let (datagram_sender, datagrams) = local_channel::new_unbounded();
    let receiving = socket.clone();
    glommio::spawn_local(async move {
        let mut buffer = vec![0u8; 65_536];
        loop {
            match receiving.recv_from(&mut buffer).await {
                Ok((len, from)) => {
                    if datagram_sender.try_send((BytesMut::from(&buffer[..len]), from)).is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!("quic endpoint {local_address}: receive failed: {error}"),
            }
        }
    })
    .detach();
    let (event_sender, events) = local_channel::new_unbounded();
    let (commands, command_receiver) = local_channel::new_unbounded();
    let driver = Driver {
        socket,
        endpoint: quinn_proto::Endpoint::new(
            Arc::new(EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key)))),
            Some(config.clone()),
            false,
            None,
        ),
        config,
        connections: HashMap::new(),
        ids: HashMap::new(),
        id_next: 0,
        events: event_sender,
        out: Vec::with_capacity(1500),
        dirty: std::collections::HashSet::new(),
    };
    glommio::spawn_local(driver.run(datagrams, command_receiver)).detach();
    Ok(Endpoint { events, commands, local_address })
}

struct Driver {
    socket: std::rc::Rc<UdpSocket>,
    endpoint: quinn_proto::Endpoint,
    config: Arc<quinn_proto::ServerConfig>,
    connections: HashMap<ConnectionHandle, Connection>,
    ids: HashMap<ConnectionId, ConnectionHandle>,
    id_next: ConnectionId,
    events: LocalSender<Event>,
    out: Vec<u8>,
    /// Connections with something new since the last pump: only they are pumped, so a wake
    /// costs the connections it concerns, not all of them.
    dirty: std::collections::HashSet<ConnectionHandle>,
}

enum Wake {
    Datagram(Option<(BytesMut, SocketAddr)>),
    Command(Option<Command>),
    Timeout,
}

impl Driver {
    async fn run(mut self, datagrams: LocalReceiver<(BytesMut, SocketAddr)>, commands: LocalReceiver<Command>) {
        loop {
            self.pump().await;
            let deadline = self.connections.values_mut().filter_map(|connection| connection.quic.poll_timeout()).min();
            let wait = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            let wake = if wait.is_some_and(|wait| wait.is_zero()) {
                Wake::Timeout
            } else {
                let inputs = futures_lite::future::or(async { Wake::Datagram(datagrams.recv().await) }, async {
                    Wake::Command(commands.recv().await)
                });
                match wait {
                    Some(wait) => {
                        futures_lite::future::or(inputs, async {
                            glommio::timer::sleep(wait).await;
                            Wake::Timeout
                        })
                        .await
                    }
                    None => inputs.await,
                }
            };
            let now = Instant::now();
            match wake {
                Wake::Datagram(Some((data, from))) => self.datagram(now, data, from).await,
                Wake::Command(Some(command)) => self.command(now, command),
                Wake::Datagram(None) | Wake::Command(None) => return,
                Wake::Timeout => {
                    for (handle, connection) in self.connections.iter_mut() {
                        if connection.quic.poll_timeout().is_some_and(|deadline| deadline <= now) {
                            connection.quic.handle_timeout(now);
                            self.dirty.insert(*handle);
                        }
                    }
                }
            }
            // Take whatever else is waiting before pumping: fewer, fuller rounds.
            while let Some(Some(command)) = futures_lite::future::poll_once(commands.recv()).await {
                self.command(Instant::now(), command);
            }
        }
    }

    async fn datagram(&mut self, now: Instant, data: BytesMut, from: SocketAddr) {
        self.out.clear();
        match self.endpoint.handle(now, from, None, None, data, &mut self.out) {
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.connections.len() >= limits::connections_per_shard_max {
                    let transmit = self.endpoint.refuse(incoming, &mut self.out);
                    self.send(transmit.size, transmit.destination).await;
                    return;
                }
                let mut buffer = Vec::new();
                match self.endpoint.accept(incoming, now, &mut buffer, Some(self.config.clone())) {
                    Ok((handle, quic)) => {
                        let id = self.id_next;
                        self.id_next += 1;
                        self.ids.insert(id, handle);
                        let connection = Connection {
                            id,
                            quic,
                            stream: None,
                            reader: frame::Reader::default(),
                            outgoing: VecDeque::new(),
                            outgoing_bytes: 0,
                            in_flight: 0,
                        };
                        self.connections.insert(handle, connection);
                        self.dirty.insert(handle);
                    }
                    Err(error) => {
                        tracing::debug!("quic: refused a connection: {:?}", error.cause);
                        if let Some(transmit) = error.response {
                            self.out = buffer;
                            self.send(transmit.size, transmit.destination).await;
                        }
                    }
                }
            }
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(connection) = self.connections.get_mut(&handle) {
                    connection.quic.handle_event(event);
                    self.dirty.insert(handle);
                }
            }
            Some(DatagramEvent::Response(transmit)) => self.send(transmit.size, transmit.destination).await,
            None => {}
        }
    }

    fn command(&mut self, now: Instant, command: Command) {
        let id = match &command {
            Command::Send { connection, .. } | Command::Done { connection } | Command::Close { connection, .. } => {
                *connection
            }
        };
        let Some(&handle) = self.ids.get(&id) else { return };
        let Some(connection) = self.connections.get_mut(&handle) else { return };
        self.dirty.insert(handle);
        match command {
            Command::Send { frame, .. } => {
                connection.outgoing_bytes += frame.len();
                connection.outgoing.push_back(Bytes::from(frame));
                if connection.outgoing_bytes > limits::send_buffer_bytes_max {
                    close(connection, now, CLOSE_PROTOCOL, "the client does not read its replies");
                }
            }
            Command::Done { .. } => connection.in_flight = connection.in_flight.saturating_sub(1),
            Command::Close { reason, .. } => close(connection, now, CLOSE_PROTOCOL, &reason),
        }
    }

    async fn send(&mut self, len: usize, destination: SocketAddr) {
        if let Err(error) = self.socket.send_to(&self.out[..len], destination).await {
            tracing::debug!("quic: send to {destination} failed: {error}");
        }
    }

    /// Runs every connection until it has nothing more to do: endpoint events, stream
    /// events, frames in, bytes out, datagrams out.
    async fn pump(&mut self) {
        let now = Instant::now();
        let handles: Vec<ConnectionHandle> = self.dirty.drain().collect();
        for handle in handles {
            while let Some(connection) = self.connections.get_mut(&handle) {
                while let Some(event) = connection.quic.poll_endpoint_events() {
                    if let Some(event) = self.endpoint.handle_event(handle, event) {
                        connection.quic.handle_event(event);
                    }
                }
                while let Some(event) = connection.quic.poll() {
                    match event {
                        QuicEvent::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                            while let Some(stream) = connection.quic.streams().accept(Dir::Bi) {
                                if connection.stream.is_none() {
                                    connection.stream = Some(stream);
                                } else {
                                    close(connection, now, CLOSE_PROTOCOL, "one stream per connection");
                                }
                            }
                        }
                        QuicEvent::ConnectionLost { reason } => {
                            tracing::debug!("quic: connection {} lost: {reason}", connection.id);
                        }
                        _ => {}
                    }
                }
                read_frames(connection, now, &self.events);
                write_outgoing(connection);
                self.out.clear();
                let connection = self.connections.get_mut(&handle).unwrap_or_else(|| unreachable!("present above"));
                match connection.quic.poll_transmit(now, 1, &mut self.out) {
                    Some(transmit) => self.send(transmit.size, transmit.destination).await,
                    None => break,
                }
            }
            if self.connections.get(&handle).is_some_and(|connection| connection.quic.is_drained()) {
                if let Some(connection) = self.connections.remove(&handle) {
                    self.ids.remove(&connection.id);
                    let _ = self.events.try_send(Event::Closed { connection: connection.id });
                }
            }
        }
    }
}

fn close(connection: &mut Connection, now: Instant, code: u32, reason: &str) {
    tracing::debug!("quic: closing connection {}: {reason}", connection.id);
    connection.quic.close(now, code.into(), Bytes::copy_from_slice(reason.as_bytes()));
}

/// Reads the connection's stream while it may have more requests in flight, and hands whole
/// frames to the shard. A bad header closes the connection.
fn read_frames(connection: &mut Connection, now: Instant, events: &LocalSender<Event>) {
    let Some(stream) = connection.stream else { return };
    while connection.in_flight < limits::requests_in_flight_per_connection_max {
        match connection.reader.next_frame() {
            Ok(Some((kind, payload))) => {
                if kind == Kind::Request {
                    connection.in_flight += 1;
                }
                let _ = events.try_send(Event::Frame { connection: connection.id, kind, payload });
                continue;
            }
            Ok(None) => {}
            Err(error) => return close(connection, now, CLOSE_PROTOCOL, &format!("bad frame: {error}")),
        }
        let mut finished = false;
        let mut read_any = false;
        {
            let mut receive = connection.quic.recv_stream(stream);
            if let Ok(mut chunks) = receive.read(true) {
                // One chunk at a time keeps the in-flight bound honest.
                match chunks.next(limits::frame_bytes_max) {
                    Ok(Some(chunk)) => {
                        connection.reader.extend(&chunk.bytes);
                        read_any = true;
                    }
                    Ok(None) => finished = true,
                    Err(_) => {}
                }
                let _ = chunks.finalize();
            };
        }
        if finished {
            return close(connection, now, CLOSE_NORMAL, "the client finished its stream");
        }
        if !read_any {
            return;
        }
    }
}

fn write_outgoing(connection: &mut Connection) {
    let Some(stream) = connection.stream else { return };
    while let Some(front) = connection.outgoing.front_mut() {
        match connection.quic.send_stream(stream).write(front) {
            Ok(written) if written == front.len() => {
                connection.outgoing_bytes -= written;
                connection.outgoing.pop_front();
            }
            Ok(written) => {
                connection.outgoing_bytes -= written;
                let _ = front.split_to(written);
                return;
            }
            Err(_) => return, // Blocked: the Writable event brings us back.
        }
    }
}
