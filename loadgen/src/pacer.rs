//! The open-loop pacer: a thread that releases a lane's requests at their intended times.
//!
//! Tokio's timers round every deadline up to the next millisecond: on the development VM a
//! tokio sleep ends 1.4 ms late (median), which open-loop latencies, counted from the intended
//! time, would all carry; the server answers in about 0.1 ms. A plain thread's sleep ends
//! about 0.09 ms late there, so the lane's requests are released by this thread instead,
//! through a watch channel holding how many are released (release to worker: about 0.2 ms,
//! median, waking the runtime included). Only the worker next in line waits on it, so a
//! release wakes one task, and all the requests found due at one wake-up go together.
//!
//! **A request is never released before its intended time.**

use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::limits;
use crate::schedule::Schedule;

/// Starts releasing the requests of `schedule` intended before `until`. The receiver holds
/// how many have been released; the thread ends once all are, or at most
/// `pacer_sleep_ms_max` after every receiver is gone.
pub fn start(schedule: Schedule, until: Instant) -> std::io::Result<(watch::Receiver<u64>, thread::JoinHandle<()>)> {
    let (released, receiver) = watch::channel(0);
    let thread =
        thread::Builder::new().name("loadgen-pacer".into()).spawn(move || pace(&schedule, until, &released))?;
    Ok((receiver, thread))
}

fn pace(schedule: &Schedule, until: Instant, released: &watch::Sender<u64>) {
    let sleep_max = Duration::from_millis(limits::pacer_sleep_ms_max);
    let mut count = 0;
    loop {
        let due = schedule.intended(count);
        if due >= until || released.is_closed() {
            return;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep((due - now).min(sleep_max));
            continue;
        }
        while schedule.intended(count) <= now && schedule.intended(count) < until {
            count += 1;
        }
        released.send_replace(count);
    }
}

#[cfg(test)]
mod tests {
    //! A real pacer thread, timed against its schedule: never early, not far late, gone with its lane.

    use super::*;

    #[test]
    fn requests_are_released_on_time_never_early() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let begin = Instant::now() + Duration::from_millis(20);
        let schedule = Schedule::new(begin, 200.0, 0, 1);
        let until = begin + Duration::from_millis(300);
        let (mut released, _thread) = start(schedule, until).unwrap();
        let releases = runtime.block_on(async move {
            let mut releases = Vec::new();
            for k in 0..60 {
                released.wait_for(|&count| count > k).await.unwrap();
                releases.push(Instant::now());
            }
            // Past `until` nothing more is released, and the pacer ends.
            assert!(released.wait_for(|&count| count > 60).await.is_err());
            releases
        });
        let mut late_total = Duration::ZERO;
        for (k, released_at) in releases.iter().enumerate() {
            let intended = schedule.intended(k as u64);
            assert!(*released_at >= intended, "request {k} released {:?} early", intended - *released_at);
            late_total += *released_at - intended;
        }
        // On a quiet machine the mean lateness is tens of microseconds; a loaded one can be
        // far worse, but not the whole schedule.
        let late_mean = late_total / 60;
        assert!(late_mean < Duration::from_millis(100), "released {late_mean:?} late on average");
    }

    #[test]
    fn the_pacer_stops_when_its_lane_is_gone() {
        let now = Instant::now();
        let schedule = Schedule::new(now + Duration::from_secs(1), 1.0, 0, 1);
        let (released, thread) = start(schedule, now + Duration::from_secs(3600)).unwrap();
        drop(released);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the pacer outlived its lane");
            thread::sleep(Duration::from_millis(10));
        }
    }
}
