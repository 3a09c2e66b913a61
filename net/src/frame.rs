//! Frames: what travels on a connection's stream, in both directions. See `net/FRAMES.md`.
//!
//! A frame is a 12-byte header (magic, version, kind, length) and an rkyv archive of the
//! frame's message. Bytes from the network are checked before anything reads them: the header
//! first (magic, version, a known kind, a length within `frame_bytes_max`), then the archive
//! (bytecheck validation), then every name in it. A frame that fails any check is an error
//! that closes its connection.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::{limits, Error};

/// "SFNP", little-endian: a statefun native protocol frame.
pub const MAGIC: u32 = u32::from_le_bytes(*b"SFNP");
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 12;

/// Which message a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Request = 3,
    Reply = 4,
    Subscribe = 5,
    Egress = 6,
    Refused = 7,
    Snapshot = 8,
    Snapshotted = 9,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Request,
            4 => Kind::Reply,
            5 => Kind::Subscribe,
            6 => Kind::Egress,
            7 => Kind::Refused,
            8 => Kind::Snapshot,
            9 => Kind::Snapshotted,
            _ => return None,
        })
    }
}

/// The client's first frame: who it is.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hello {
    pub token: String,
}

/// One shard's endpoint in the cluster map.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardEndpoint {
    pub shard: u16,
    /// `host:port` as the client should dial it.
    pub address: String,
}

/// The server's answer to a good `Hello`: the cluster map.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Welcome {
    /// The shard this connection reached.
    pub shard: u16,
    /// Every shard's endpoint; key groups go to shards in contiguous ranges (`Routing`).
    pub shards: Vec<ShardEndpoint>,
}

/// What a request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Want {
    /// The message is durably in its target's mailbox.
    Admission,
    /// The function's answer.
    Answer,
}

/// A message for a function, as `call` or `send`.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Request {
    /// Numbers the request on its connection; the reply carries it back.
    pub id: u64,
    /// `namespace/type` of the target function.
    pub function: String,
    pub target_id: String,
    pub typename: String,
    pub value: Vec<u8>,
    /// The idempotency key: a retry with the same key gets the first outcome.
    pub key: String,
    pub want: Want,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Outcome {
    Admitted,
    Reply {
        typename: String,
        value: Vec<u8>,
    },
    /// The function failed on the message.
    Failed(String),
    /// The server refused the request; `retry` says whether trying again later may work.
    Refused {
        reason: String,
        retry: bool,
    },
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Reply {
    pub id: u64,
    pub outcome: Outcome,
}

/// Streams an egress from this shard, starting at `from` (a position of this shard's egress).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Subscribe {
    pub id: u64,
    pub egress: String,
    pub from: u64,
}

/// One egress record, after its commit.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Egress {
    /// The subscription it answers.
    pub id: u64,
    pub position: u64,
    pub typename: String,
    pub value: Vec<u8>,
}

/// Why the server closes the connection.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Refused {
    pub reason: String,
}

/// Asks the shard the connection reached for a checkpoint now; `Snapshotted` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Snapshot {
    /// Numbers the snapshot request on its connection (from the same counter as requests);
    /// the answer carries it back.
    pub id: u64,
}

/// How a shard's checkpoint ended.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum SnapshotOutcome {
    /// The checkpoint's manifest is durable in the blob store.
    Done {
        generation: u64,
        /// The LSN of the last log record the checkpoint holds.
        lsn: u64,
        /// Chunks this checkpoint wrote (chunks already stored are not written again).
        chunks: u32,
        /// Bytes this checkpoint wrote: its new chunks and its manifest.
        bytes: u64,
        /// Addresses captured: all of them for a base, the changed ones for a delta.
        states: u64,
        /// A base (every address) rather than a delta.
        base: bool,
    },
    /// No checkpoint was taken, and why.
    Failed(String),
}

/// A shard's answer to `Snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Snapshotted {
    /// The `Snapshot` it answers.
    pub id: u64,
    pub outcome: SnapshotOutcome,
}

/// A checked header: the frame's kind and the length of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: usize,
}

/// Reads a header from the start of `bytes` (at least [`HEADER_BYTES`] long).
pub fn header(bytes: &[u8]) -> Result<Header, Error> {
    assert!(bytes.len() >= HEADER_BYTES);
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != MAGIC {
        return Err(Error::Magic(magic));
    }
    if bytes[4] != VERSION {
        return Err(Error::Version(bytes[4]));
    }
    let kind = Kind::from_byte(bytes[5]).ok_or(Error::Kind(bytes[5]))?;
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if len > limits::frame_bytes_max {
        return Err(Error::TooLarge(len));
    }
    Ok(Header { kind, len })
}

/// Encodes a message as a whole frame.
pub fn encode<T>(kind: Kind, message: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    let payload = rkyv::to_bytes::<rancor::Error>(message).unwrap_or_else(|error| panic!("encoding a frame: {error}"));
    assert!(payload.len() <= limits::frame_bytes_max, "a frame of {} bytes", payload.len());
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.push(VERSION);
    frame.push(kind as u8);
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Validates a payload and returns its archived message, read in place.
pub fn access<T>(kind: Kind, payload: &AlignedVec) -> Result<&T::Archived, Error>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T::Archived, rancor::Error>(payload).map_err(|error| Error::Payload { kind, why: error.to_string() })
}

/// Validates a payload and returns an owned message.
pub fn decode<T>(kind: Kind, payload: &AlignedVec) -> Result<T, Error>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let archived = access::<T>(kind, payload)?;
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|error| Error::Payload { kind, why: error.to_string() })
}

/// Cuts whole frames out of a byte stream.
#[derive(Debug, Default)]
pub struct Reader {
    buffer: Vec<u8>,
}

impl Reader {
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if the buffer holds one: its kind and its payload, copied to an
    /// aligned buffer for in-place reading.
    pub fn next_frame(&mut self) -> Result<Option<(Kind, AlignedVec)>, Error> {
        if self.buffer.len() < HEADER_BYTES {
            return Ok(None);
        }
        let header = header(&self.buffer)?;
        if self.buffer.len() < HEADER_BYTES + header.len {
            return Ok(None);
        }
        let mut payload = AlignedVec::with_capacity(header.len);
        payload.extend_from_slice(&self.buffer[HEADER_BYTES..HEADER_BYTES + header.len]);
        self.buffer.drain(..HEADER_BYTES + header.len);
        Ok(Some((header.kind, payload)))
    }

    /// Bytes buffered and not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `frame` with one bit of its payload flipped, read back as a frame.
    fn damaged(frame: &[u8], flip: usize, bit: u8) -> (Kind, AlignedVec) {
        let mut damaged = frame.to_vec();
        let at = HEADER_BYTES + flip % (frame.len() - HEADER_BYTES);
        damaged[at] ^= 1 << bit;
        let mut reader = Reader::default();
        reader.extend(&damaged);
        reader.next_frame().unwrap().unwrap()
    }

    fn request(value: Vec<u8>) -> Request {
        Request {
            id: 7,
            function: "example/counter".into(),
            target_id: "a".into(),
            typename: "example/delta".into(),
            value,
            key: "k1".into(),
            want: Want::Answer,
        }
    }

    #[test]
    fn frames_round_trip_through_the_reader() {
        let mut reader = Reader::default();
        let first = encode(Kind::Request, &request(b"5".to_vec()));
        let second = encode(
            Kind::Reply,
            &Reply { id: 7, outcome: Outcome::Reply { typename: "a/b".into(), value: b"9".to_vec() } },
        );
        let mut stream = first.clone();
        stream.extend_from_slice(&second);
        // Byte by byte: frames come out whole, in order, only when complete.
        let mut frames = Vec::new();
        for byte in stream {
            reader.extend(&[byte]);
            if let Some(frame) = reader.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(decode::<Request>(Kind::Request, &frames[0].1).unwrap(), request(b"5".to_vec()));
        let reply: Reply = decode(Kind::Reply, &frames[1].1).unwrap();
        assert_eq!(reply.id, 7);
        assert_eq!(reader.buffered(), 0);
    }

    fn done(generation: u64) -> SnapshotOutcome {
        SnapshotOutcome::Done { generation, lsn: 123_456, chunks: 3, bytes: 1_258_291, states: 1_200, base: false }
    }

    fn snapshot_outcome() -> impl Strategy<Value = SnapshotOutcome> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(generation, lsn, chunks, bytes, states, base)| SnapshotOutcome::Done {
                    generation,
                    lsn,
                    chunks,
                    bytes,
                    states,
                    base
                }
            ),
            any::<String>().prop_map(SnapshotOutcome::Failed),
        ]
    }

    #[test]
    fn snapshot_frames_round_trip_with_their_kind_bytes() {
        let ask = encode(Kind::Snapshot, &Snapshot { id: 3 });
        let answers = [
            encode(Kind::Snapshotted, &Snapshotted { id: 3, outcome: done(4) }),
            encode(
                Kind::Snapshotted,
                &Snapshotted { id: 4, outcome: SnapshotOutcome::Failed("shard 1: snapshots are not enabled".into()) },
            ),
        ];
        // The kind bytes are the wire format: FRAMES.md gives them.
        assert_eq!(ask[5], 8);
        assert!(answers.iter().all(|answer| answer[5] == 9));
        let mut reader = Reader::default();
        reader.extend(&ask);
        answers.iter().for_each(|answer| reader.extend(answer));
        let (kind, payload) = reader.next_frame().unwrap().unwrap();
        assert_eq!(kind, Kind::Snapshot);
        assert_eq!(decode::<Snapshot>(kind, &payload).unwrap(), Snapshot { id: 3 });
        // An archive too small for the kind it claims is refused, not read.
        assert!(matches!(decode::<Snapshotted>(Kind::Snapshotted, &payload), Err(Error::Payload { .. })));
        let (kind, payload) = reader.next_frame().unwrap().unwrap();
        assert_eq!(kind, Kind::Snapshotted);
        assert_eq!(decode::<Snapshotted>(kind, &payload).unwrap(), Snapshotted { id: 3, outcome: done(4) });
        let (kind, payload) = reader.next_frame().unwrap().unwrap();
        let failed: Snapshotted = decode(kind, &payload).unwrap();
        assert_eq!(failed.outcome, SnapshotOutcome::Failed("shard 1: snapshots are not enabled".into()));
        assert_eq!(reader.buffered(), 0);
        // The layout FRAMES.md gives: 64 bytes, the tag at 8, `base` at 56, both checked.
        let mut payload = AlignedVec::new();
        payload.extend_from_slice(&answers[0][HEADER_BYTES..]);
        assert_eq!(payload.len(), 64);
        assert_eq!((payload[8], payload[56]), (0, 0));
        for (at, byte) in [(8, 2), (56, 2)] {
            let mut bad = payload.clone();
            bad[at] = byte;
            assert!(matches!(decode::<Snapshotted>(Kind::Snapshotted, &bad), Err(Error::Payload { .. })), "{at}");
        }
        // The kind after the last one is still unknown: a newer peer's frame is refused whole.
        let mut unknown = ask.clone();
        unknown[5] = 10;
        assert!(matches!(header(&unknown), Err(Error::Kind(10))));
    }

    #[test]
    fn bad_headers_are_errors() {
        let good = encode(Kind::Request, &request(vec![1; 10]));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(header(&magic), Err(Error::Magic(_))));
        let mut version = good.clone();
        version[4] = 9;
        assert!(matches!(header(&version), Err(Error::Version(9))));
        let mut kind = good.clone();
        kind[5] = 99;
        assert!(matches!(header(&kind), Err(Error::Kind(99))));
        let mut long = good.clone();
        long[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(header(&long), Err(Error::TooLarge(_))));
    }

    proptest! {
        /// Whatever bytes arrive, the reader and decoders answer with frames or errors, never
        /// a panic, and a valid frame survives any split into chunks.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut reader = Reader::default();
            reader.extend(&bytes);
            while let Ok(Some((kind, payload))) = reader.next_frame() {
                let _ = decode::<Request>(kind, &payload);
                let _ = decode::<Reply>(kind, &payload);
                let _ = decode::<Hello>(kind, &payload);
                let _ = decode::<Snapshot>(kind, &payload);
                let _ = decode::<Snapshotted>(kind, &payload);
            }
        }

        /// Any snapshot answer survives encoding and any split of its bytes.
        #[test]
        fn snapshot_answers_round_trip(id in any::<u64>(), outcome in snapshot_outcome(), cut in any::<usize>()) {
            let answer = Snapshotted { id, outcome };
            let mut stream = encode(Kind::Snapshot, &Snapshot { id });
            stream.extend_from_slice(&encode(Kind::Snapshotted, &answer));
            let cut = cut % stream.len();
            let mut reader = Reader::default();
            reader.extend(&stream[..cut]);
            let mut frames = Vec::new();
            while let Some(frame) = reader.next_frame().unwrap() {
                frames.push(frame);
            }
            reader.extend(&stream[cut..]);
            while let Some(frame) = reader.next_frame().unwrap() {
                frames.push(frame);
            }
            prop_assert_eq!(frames.len(), 2);
            prop_assert_eq!(decode::<Snapshot>(frames[0].0, &frames[0].1).unwrap(), Snapshot { id });
            prop_assert_eq!(frames[1].0, Kind::Snapshotted);
            prop_assert_eq!(decode::<Snapshotted>(frames[1].0, &frames[1].1).unwrap(), answer);
        }

        #[test]
        fn damaged_snapshot_answers_are_errors_or_valid(
            outcome in snapshot_outcome(),
            flip in any::<usize>(),
            bit in 0u8..8,
        ) {
            let frame = encode(Kind::Snapshotted, &Snapshotted { id: 1, outcome });
            let (kind, payload) = damaged(&frame, flip, bit);
            // Either the archive is rejected (a bad tag, a bad string), or it decodes: never a panic.
            let _ = decode::<Snapshotted>(kind, &payload);
        }

        #[test]
        fn damaged_payloads_are_errors_or_valid(
            value in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<usize>(),
            bit in 0u8..8,
        ) {
            let frame = encode(Kind::Request, &request(value));
            let (kind, payload) = damaged(&frame, flip, bit);
            // Either the archive is rejected, or it decodes to some request: never a panic.
            let _ = decode::<Request>(kind, &payload);
        }

        #[test]
        fn frames_survive_any_split(value in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<usize>()) {
            let frame = encode(Kind::Request, &request(value.clone()));
            let cut = cut % frame.len();
            let mut reader = Reader::default();
            reader.extend(&frame[..cut]);
            prop_assert!(reader.next_frame().unwrap().is_none());
            reader.extend(&frame[cut..]);
            let (kind, payload) = reader.next_frame().unwrap().unwrap();
            prop_assert_eq!(decode::<Request>(kind, &payload).unwrap(), request(value));
        }
    }
}
