//! The accept loop: HTTP/1 connections through hyper, at most `max_connections` open at once
//! (beyond that, new ones wait in the kernel's backlog until one closes), each with a time limit
//! on reading a request's headers — which also closes a connection that sends nothing, half a
//! header, or stays idle between requests — and graceful shutdown: on SIGTERM or Ctrl-C stop
//! accepting, let the requests in progress finish for the grace period, then end the streams still
//! running (each with `data: [DONE]`) and return.
//!
//! `axum::serve` is not used because it offers neither hyper's header timeout nor a connection cap.
//! Time limits apply only to reading what the client sends, never to writing a response, so a
//! stream that is generating is not cut by them (body read time is limited in [`crate::guard`]).
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// How connections are held and ended.
pub struct Limits {
    pub max_connections: usize,
    /// The longest wait for a request's headers.
    pub request_timeout: Duration,
    /// How long requests in progress may run on after a stop signal.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until a stop signal and the shutdown that follows are done. Setting
/// `cut` asks every stream still running to end now (see [`cut_off`]).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, cut: &watch::Sender<bool>) {
    let mut stop = Stop::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let why = loop {
        let slot = tokio::select! {
            why = stop.next() => break why,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else {
            break "the connection limit was closed";
        };
        let accepted = tokio::select! {
            why = stop.next() => break why,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // Streams send one small chunk per token: do not let Nagle's algorithm hold them.
                let _ = stream.set_nodelay(true);
                let conn = connection(
                    stream,
                    app.clone(),
                    limits.request_timeout,
                    closing_rx.clone(),
                    slot,
                );
                tokio::spawn(conn);
            }
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                eprintln!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    drop(listener);
    let _ = closing.send(true);
    let all = limits.max_connections as u32;
    eprintln!(
        "{why}: shutting down; {} open connections have {} s to finish",
        limits.max_connections - slots.available_permits(),
        limits.shutdown_grace.as_secs_f64()
    );
    let drained = tokio::select! {
        done = tokio::time::timeout(limits.shutdown_grace, slots.acquire_many(all)) => done.is_ok(),
        why = stop.next() => {
            eprintln!("{why} again: not waiting");
            false
        }
    };
    if !drained {
        eprintln!("ending the streams still open with data: [DONE]");
        let _ = cut.send(true);
        // The streams end at once; a client that reads nothing is not waited for long.
        let _ = tokio::time::timeout(Duration::from_secs(2), slots.acquire_many(all)).await;
    }
}

/// One connection: served until it closes; after a stop signal, it finishes the request in
/// progress and closes (an idle one closes at once).
async fn connection(
    stream: TcpStream,
    app: Router,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    // Errors (a client gone, a header timeout) end only this connection; there is nothing to tell.
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closing.wait_for(|closing| *closing) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Resolves when the server ends the requests still running, after the shutdown grace.
pub async fn cut_off(mut cut: watch::Receiver<bool>) {
    if cut.wait_for(|cut| *cut).await.is_err() {
        // The server is gone without a cut: nothing will come.
        std::future::pending::<()>().await;
    }
}

/// SIGTERM and Ctrl-C (SIGINT). The streams are made once, so a signal between two waits is not
/// lost and a second one can be told from the first.
struct Stop {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Stop {
    fn new() -> Stop {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Stop {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Stop {}
    }

    /// Waits for the next stop signal and names it.
    #[cfg(unix)]
    async fn next(&mut self) -> &'static str {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            let got = match s {
                Some(s) => s.recv().await,
                None => None,
            };
            if got.is_none() {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => "SIGTERM",
            () = recv(&mut self.int) => "Ctrl-C",
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(_) => std::future::pending().await,
        }
    }
}
