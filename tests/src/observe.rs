//! The observer's datapath running in-process, on a thread inside a lab's node namespace.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use observer::bpf::{
    Datapath, DatapathConfig, KernelEvent,
    links::{self, LinkChange},
};

use crate::{Netns, wait_for};

/// An attached datapath collecting every event; detached on drop.
pub struct Observer {
    events: Arc<Mutex<Vec<KernelEvent>>>,
    changes: Arc<Mutex<Vec<LinkChange>>>,
    datapath: Arc<Mutex<Option<Arc<Mutex<Datapath>>>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    /// Loads the programs and follows the node namespace's interfaces matching `config.interfaces`;
    /// returns once each of `expect_attached` is attached.
    pub fn start(node: &Netns, config: DatapathConfig, expect_attached: &[&str]) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let datapath = Arc::new(Mutex::new(None));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ev, ch, dp) = (events.clone(), changes.clone(), datapath.clone());
        let thread = node.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut d = Datapath::load(&config).expect("loading the datapath");
                let mut reader = d.events().expect("ring buffer");
                let d = Arc::new(Mutex::new(d));
                *dp.lock().expect("lock") = Some(d.clone());
                let ch2 = ch.clone();
                let mut follow = Box::pin(links::follow(d.clone(), move |c| {
                    ch2.lock().expect("lock").push(c)
                }));
                let mut batch = Vec::new();
                loop {
                    tokio::select! {
                        r = &mut follow => { r.expect("link follower"); break; }
                        r = reader.next_batch(&mut batch) => {
                            r.expect("ring buffer");
                            ev.lock().expect("lock").append(&mut batch);
                        }
                        _ = &mut stop_rx => break,
                    }
                }
                drop(follow);
                dp.lock().expect("lock").take();
                let d = Arc::into_inner(d)
                    .expect("sole owner")
                    .into_inner()
                    .expect("lock");
                d.shutdown();
            });
        });
        let this = Self {
            events,
            changes,
            datapath,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        for name in expect_attached {
            this.wait_attached(name, Duration::from_secs(10));
        }
        this
    }

    #[track_caller]
    pub fn wait_attached(&self, name: &str, deadline: Duration) {
        let found = wait_for(deadline, || {
            self.changes
                .lock()
                .expect("lock")
                .iter()
                .any(|c| matches!(c, LinkChange::Attached { name: n, .. } if n == name))
                .then_some(())
        });
        assert!(
            found.is_some(),
            "{name} not attached; link changes: {:?}",
            self.changes.lock().expect("lock")
        );
    }

    pub fn link_changes(&self) -> Vec<LinkChange> {
        self.changes.lock().expect("lock").clone()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<KernelEvent> {
        self.events.lock().expect("lock").clone()
    }

    /// Waits until an event satisfies `pred`.
    pub fn wait_event(
        &self,
        deadline: Duration,
        pred: impl Fn(&KernelEvent) -> bool,
    ) -> Option<KernelEvent> {
        wait_for(deadline, || {
            self.events
                .lock()
                .expect("lock")
                .iter()
                .find(|e| pred(e))
                .cloned()
        })
    }

    /// Runs `f` on the live datapath (flow table, lost counters).
    pub fn with_datapath<T>(&self, f: impl FnOnce(&Datapath) -> T) -> T {
        let dp = self
            .datapath
            .lock()
            .expect("lock")
            .clone()
            .expect("datapath running");
        let d = dp.lock().expect("lock");
        f(&d)
    }

    /// Detaches and waits for the observer thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take()
            && let Err(panic) = t.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
