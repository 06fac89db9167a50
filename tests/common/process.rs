//! Every process a test starts goes through [`ChildGuard`]: it is stopped when the test ends,
//! whether the test passes, fails or panics, and even when the test binary itself is killed.
//!
//! - The child leads a process group of its own; dropping the guard sends SIGKILL to the whole
//!   group, so whatever the child started dies with it.
//! - The child gets SIGKILL from the kernel when the test binary dies (`PR_SET_PDEATHSIG`). The
//!   kernel ties that signal to the *thread* that forked, so every child is forked by one
//!   spawner thread that lives as long as the test binary: a child started from a test's own
//!   thread, or from a helper thread that ends early, does not die before its time.
//! - The child's environment carries [`MARKER`] set to this checkout's path, so that
//!   `scripts/leftover-processes` can name a leftover of this checkout and of no other.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Output};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable that marks a process as started by this checkout's tests.
pub const MARKER: &str = "NUKI_TEST_CHECKOUT";

/// How long callers of [`ChildGuard::wait_within`] wait for an exit by default: a hang, not a
/// slow machine.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(60);
/// How often an exit is looked for.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// A command for the spawner thread to spawn, borrowed from a caller that blocks until the
/// spawner has answered (so the borrow outlives every use).
struct Borrowed(*mut Command);

// SAFETY: `Command` is `Send`; the pointer is used by the spawner thread alone, while its owner
// waits for the answer.
unsafe impl Send for Borrowed {}

type SpawnRequest = (Borrowed, mpsc::Sender<io::Result<Child>>);

/// A child process killed, with its process group, when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    /// `None` only once [`ChildGuard::wait_with_output`] has taken it.
    child: Option<Child>,
    /// Whether the child has been waited for: its pid, and so its group id, may then be reused.
    reaped: bool,
    program: String,
}

impl ChildGuard {
    /// Starts `command` in its own process group, marked, dying with the test binary.
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        let program = command.get_program().to_string_lossy().into_owned();
        command
            .env(MARKER, env!("CARGO_MANIFEST_DIR"))
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The test binary died between fork and prctl: nobody would kill us later.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("the test binary ended during spawn"));
                }
                Ok(())
            });
        }
        let (reply, child) = mpsc::channel();
        spawner()
            .send((Borrowed(command), reply))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let child = child
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone"))??;
        Ok(Self {
            child: Some(child),
            reaped: false,
            program,
        })
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the child is still held")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("the child is still held").id()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child().stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child().stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child().stderr.take()
    }

    /// The exit status, if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.reap(false)
    }

    /// Sends `signal` (`libc::SIGTERM`, `libc::SIGHUP`, ...) to the child alone.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.id() as libc::pid_t;
        // SAFETY: kill only reads its arguments; the pid is our unreaped child's.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            result,
            0,
            "kill -{signal} {pid} ({}): {}",
            self.program,
            io::Error::last_os_error()
        );
    }

    /// Waits for the exit, blocking the calling thread.
    pub fn wait(&mut self) -> ExitStatus {
        self.reap(true).expect("a blocking wait returns an exit")
    }

    /// Once the child has exited, and before its pid is released, SIGKILL to what is left of
    /// its group (whatever it started); then the exit status.
    fn reap(&mut self, block: bool) -> Option<ExitStatus> {
        if !self.reaped {
            let pid = self.id();
            let mut flags = libc::WEXITED | libc::WNOWAIT;
            if !block {
                flags |= libc::WNOHANG;
            }
            // SAFETY: a zeroed siginfo_t is valid; waitid writes into it. WNOWAIT leaves the
            // child a zombie, so its pid stays reserved for the killpg below.
            let exited = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let result = libc::waitid(libc::P_PID, pid, &mut info, flags);
                assert_eq!(result, 0, "waitid: {}", io::Error::last_os_error());
                info.si_pid() != 0
            };
            if !exited {
                return None;
            }
            kill_group(pid);
            self.reaped = true;
        }
        Some(self.child().wait().expect("waitpid on our own child"))
    }

    /// Waits for the exit, blocking the calling thread; fails the test after `deadline` (the
    /// guard then kills the child as it drops).
    pub fn wait_within(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            self.assert_before(until, deadline);
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// [`ChildGuard::wait_within`] without blocking the async runtime.
    pub async fn exited_within(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            self.assert_before(until, deadline);
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    fn assert_before(&self, until: Instant, deadline: Duration) {
        assert!(
            Instant::now() < until,
            "{} did not exit within {deadline:?}",
            self.program
        );
    }

    /// Waits for the exit and collects whatever stdout and stderr were piped.
    pub fn wait_with_output(mut self) -> Output {
        let child = self.child.take().expect("the child is still held");
        let output = child.wait_with_output().expect("waitpid on our own child");
        self.reaped = true;
        output
    }

    /// SIGKILL to the child's process group, then reaps the child.
    pub fn kill(&mut self) -> ExitStatus {
        kill_group(self.id());
        self.wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            if let Some(child) = &mut self.child {
                kill_group(child.id());
                let _ = child.wait();
            }
        }
    }
}

fn kill_group(leader: u32) {
    // SAFETY: killpg only reads its arguments. The group id is the pid of our own child, which
    // stays reserved until we reap it, so the signal cannot reach another checkout's processes.
    unsafe {
        libc::killpg(leader as libc::pid_t, libc::SIGKILL);
    }
}

/// The thread that forks every child; it lives until the test binary exits.
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, queue) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                // Never ends: the static keeps a sender.
                for (Borrowed(command), reply) in queue {
                    // SAFETY: see `Borrowed`: the owner blocks on `reply` meanwhile.
                    let _ = reply.send(unsafe { &mut *command }.spawn());
                }
            })
            .expect("the spawner thread starts");
        requests
    })
}
