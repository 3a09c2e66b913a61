//! A full disk: the node runs on a small ext4 filesystem (a loop-mounted image) until the
//! log cannot get its next segment. The shard must refuse new work with a message that says
//! the disk is full, acknowledge nothing it did not sync, and after space is freed and the
//! node restarted, everything acknowledged before must be there.
//!
//! Mounting needs root (as in CI and on the development machines); the test says so if it
//! cannot mount.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{data_dir, try_post, Server};

/// A small ext4 filesystem mounted for the test, unmounted when dropped.
struct SmallDisk {
    image: PathBuf,
    mount: PathBuf,
}

impl SmallDisk {
    fn new(mib: u64) -> SmallDisk {
        let base = data_dir();
        std::fs::create_dir_all(&base).unwrap();
        let (image, mount) = (base.join("disk.img"), base.join("mnt"));
        std::fs::create_dir_all(&mount).unwrap();
        let run = |program: &str, args: &[&str]| {
            let output = Command::new(program).args(args).output().unwrap_or_else(|error| panic!("{program}: {error}"));
            assert!(
                output.status.success(),
                "{program} {args:?} failed (this test mounts a loop device and needs root): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let image_text = image.to_str().unwrap();
        run("truncate", &["-s", &format!("{mib}M"), image_text]);
        run("mkfs.ext4", &["-q", "-F", image_text]);
        run("mount", &["-o", "loop", image_text, mount.to_str().unwrap()]);
        SmallDisk { image, mount }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).output();
        let _ = std::fs::remove_dir_all(self.image.parent().unwrap());
    }
}

fn call(server: &Server, target: &str, key: &str, body: &str) -> (u16, String) {
    let reply = try_post(&format!("{}/v1/call/{target}", server.url), key, body, Duration::from_secs(5));
    reply.map(|reply| (reply.status, reply.body)).unwrap_or_else(|error| (0, error))
}

#[test]
fn a_full_disk_stops_the_shard_and_loses_nothing_committed() {
    let disk = SmallDisk::new(40);
    let data = disk.mount.join("data");
    // Ballast: space to free later.
    let ballast = disk.mount.join("ballast");
    std::fs::write(&ballast, vec![1u8; 8 << 20]).unwrap();
    let args = ["--shards", "1", "--log-segment-mib", "4", "--call-timeout-ms", "2000"];
    let server = Server::start_in(&data, &args);
    for n in 0..20 {
        assert_eq!(call(&server, "example/counter/kept", &format!("kept-{n}"), "1"), (200, (n + 1).to_string()));
    }
    // Large reminders fill the log until a new segment does not fit.
    let text = "x".repeat(200_000);
    let mut refusal = None;
    for n in 0..400 {
        let (status, body) =
            call(&server, &format!("example/reminder/r{n}"), &format!("fill-{n}"), &format!("remind 3600000 {text}"));
        if status != 200 {
            refusal = Some((status, body));
            break;
        }
    }
    let (status, body) = refusal.expect("the disk never filled up");
    assert!(status == 503 || status == 504, "{status}: {body}");
    // Whatever the request in flight saw, the shard now refuses work and says why.
    let (status, body) = call(&server, "example/counter/kept", "after-full", "1");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the disk is full"), "{body}");
    server.kill();

    std::fs::remove_file(&ballast).unwrap();
    let server = Server::start_in(&data, &args);
    assert_eq!(call(&server, "example/counter/kept", "read", "0"), (200, "20".to_string()), "committed state survived");
    assert_eq!(
        call(&server, "example/counter/kept", "kept-3", "1"),
        (200, "4".to_string()),
        "an old key is answered, not applied"
    );
    assert_eq!(call(&server, "example/counter/kept", "new", "1"), (200, "21".to_string()), "the shard works again");
    server.kill();
}
