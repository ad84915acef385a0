//! Zero-copy relay on Linux: splice(2) moves each direction's bytes socket → pipe → socket
//! inside the kernel, never through a user-space buffer. Same contract as the copy relay: each
//! direction is shut down for writing when its source ends, the other goes on (half-close), and
//! the bytes are counted as they pass.

use std::io;
use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, splice};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Capacity asked for each pipe, and so the most bytes one splice call moves.
const PIPE_BYTES: usize = 256 * 1024;

/// A non-blocking pipe, the kernel-side buffer of one direction.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the pipe holds: [`PIPE_BYTES`], or the default 64 KiB where the system caps it lower.
    capacity: usize,
}

impl Pipe {
    /// Fails when the process is out of file descriptors, say: the caller then copies instead.
    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = nix::fcntl::fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as i32))
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(64 * 1024);
        Ok(Self {
            read,
            write,
            capacity,
        })
    }
}

/// Relays both ways until both directions ended, counting bytes read from the client as `in`
/// and bytes written to it as `out`. Returns (client → backend, backend → client) bytes.
pub(crate) async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    pipes: [Pipe; 2],
    bytes_in: &Counter,
    bytes_out: &Counter,
) -> io::Result<(u64, u64)> {
    let [upstream, downstream] = pipes;
    let (client_read, mut client_write) = client.split();
    let (backend_read, mut backend_write) = backend.split();
    tokio::try_join!(
        one_way(
            &client_read,
            &mut backend_write,
            &upstream,
            Counted::OnRead(bytes_in)
        ),
        one_way(
            &backend_read,
            &mut client_write,
            &downstream,
            Counted::OnWrite(bytes_out)
        ),
    )
}

/// Which side of a direction the metric counts.
#[derive(Clone, Copy)]
enum Counted<'a> {
    OnRead(&'a Counter),
    OnWrite(&'a Counter),
}

async fn one_way(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    pipe: &Pipe,
    counted: Counted<'_>,
) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // The pipe is empty here: fill it from the source.
        let source: &TcpStream = from.as_ref();
        let filled = loop {
            source.readable().await?;
            let spliced = source.try_io(Interest::READABLE, || {
                splice(source, None, &pipe.write, None, pipe.capacity, flags)
                    .map_err(io::Error::from)
            });
            match spliced {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        if let Counted::OnRead(counter) = counted {
            counter.inc_by(filled as u64);
        }
        // Drain it into the destination before reading more, so a slow reader holds back its
        // writer as with the copy relay.
        let sink: &TcpStream = to.as_ref();
        let mut left = filled;
        while left > 0 {
            sink.writable().await?;
            let spliced = sink.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, sink, None, left, flags).map_err(io::Error::from)
            });
            match spliced {
                Ok(n) => {
                    left -= n;
                    if let Counted::OnWrite(counter) = counted {
                        counter.inc_by(n as u64);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += filled as u64;
    }
}
