//! One TCP connection: the socket wrapper that lets faults close or reset it mid-answer, with
//! TLS on top of it when the server serves HTTPS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What a handler or a response body may do to the connection it runs on.
#[derive(Debug)]
pub(crate) struct ConnControl {
    pub(crate) peer: SocketAddr,
    close_after_flush: AtomicBool,
    reset: Notify,
}

impl ConnControl {
    /// Closes the connection once everything written so far has reached the socket.
    pub(crate) fn close_after_flush(&self) {
        self.close_after_flush.store(true, Ordering::SeqCst);
    }

    /// Drops the connection with a TCP reset, whatever is in flight.
    pub(crate) fn reset(&self) {
        self.reset.notify_one();
    }
}

/// The socket as hyper sees it. It shares the stream with the connection task, which needs it
/// to set `SO_LINGER` before a reset.
struct Io {
    stream: Arc<TcpStream>,
    control: Arc<ConnControl>,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Hyper flushes the socket only after its own buffer is empty, so this is the moment
        // when a truncated body has been fully handed to the kernel.
        if self.control.close_after_flush.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::other(
                "connection closed by an injected fault",
            )));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Dropping the stream closes it; there is no half-close to do for plain HTTP/1.
        Poll::Ready(Ok(()))
    }
}

/// Serves one connection until it ends, a fault resets it, or the server stops.
///
/// With TLS, the TLS stream wraps the same [`Io`], so the faults that close or reset the
/// socket act on HTTPS connections too.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let stream = Arc::new(stream);
    let control = Arc::new(ConnControl {
        peer,
        close_after_flush: AtomicBool::new(false),
        reset: Notify::new(),
    });
    let io = Io {
        stream: Arc::clone(&stream),
        control: Arc::clone(&control),
    };
    let request_control = Arc::clone(&control);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(Arc::clone(&request_control));
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let http = hyper::server::conn::http1::Builder::new();
    let Some(acceptor) = tls else {
        let connection = http.serve_connection(TokioIo::new(io), service);
        return run(connection, &stream, &control, peer, &stop).await;
    };
    let handshake = tokio::select! {
        result = acceptor.accept(io) => result,
        () = stop.cancelled() => return,
    };
    match handshake {
        Ok(tls) => {
            let connection = http.serve_connection(TokioIo::new(tls), service);
            run(connection, &stream, &control, peer, &stop).await;
        }
        Err(e) => log::debug!("tls handshake with {peer} failed: {e}"),
    }
}

/// Drives a connection until it ends, a fault resets it, or the server stops.
async fn run(
    connection: impl Future<Output = hyper::Result<()>>,
    stream: &TcpStream,
    control: &ConnControl,
    peer: SocketAddr,
    stop: &CancellationToken,
) {
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                log::debug!("connection from {peer} ended: {e}");
            }
        }
        () = control.reset.notified() => {
            // A zero linger makes the close below send RST instead of FIN.
            if let Err(e) = stream.set_zero_linger() {
                log::warn!("cannot set SO_LINGER for a reset: {e}");
            }
            log::debug!("reset connection from {peer}");
        }
        () = stop.cancelled() => {}
    }
}
