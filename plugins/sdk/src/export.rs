//! The plugin side of the ABI: the functions of the [`PluginTable`] that [`export!`] hands the
//! host. Every function catches panics, so no unwinding crosses the boundary (since Rust 1.81
//! a panic escaping an `extern "C"` function aborts the process). Not part of the author's API.
//!
//! [`export!`]: crate::export

// The one place of the SDK that crosses the C boundary: raw pointers from the host, buffers
// handed back to it. Each unsafe block says what makes it sound.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use crate::abi::{self, Buffer, CallContext, KindInfo, PluginTable, Reply, Slice};
use crate::{Context, Error, ErrorClass, Outcome, Record, Stage};

/// Makes a type-erased stage from its configuration (JSON).
type Make = fn(&[u8]) -> Result<Box<dyn Erased>, Error>;

/// One kind as the plugin side keeps it.
pub struct KindDef {
    name: &'static str,
    description: &'static str,
    schema: String,
    create: Make,
}

/// The description of `S` for [`entry`].
pub fn kind<S: Stage>() -> KindDef {
    KindDef {
        name: S::KIND,
        description: S::DESCRIPTION,
        schema: S::config_schema().to_string(),
        create: create_erased::<S>,
    }
}

/// A [`Stage`] with its type erased, so that kinds of one library share one `process`.
pub(crate) trait Erased: Send + Sync {
    fn process(&self, record: Record, cx: &Context<'_>) -> Result<Outcome, Error>;
}

impl<S: Stage> Erased for S {
    fn process(&self, record: Record, cx: &Context<'_>) -> Result<Outcome, Error> {
        Stage::process(self, record, cx)
    }
}

/// Deserialize the configuration (JSON) and make the stage.
pub(crate) fn create_erased<S: Stage>(config: &[u8]) -> Result<Box<dyn Erased>, Error> {
    let config: S::Config = serde_json::from_slice(config)
        .map_err(|e| Error::permanent(format!("invalid configuration: {e}")))?;
    Ok(Box::new(S::new(config)?))
}

/// The table and what its pointers point into. Built once, in a static, never moved or freed.
struct Exported {
    table: PluginTable,
    kinds: Vec<KindDef>,
    _infos: Vec<KindInfo>,
}

// SAFETY: the raw pointers in `table` and `_infos` point into `kinds` and `_infos` (heap
// buffers owned by this value and never changed after it is built) or at `'static` strings, and
// the functions are plain `extern "C"` functions; sharing read-only pointers between threads is
// sound.
unsafe impl Sync for Exported {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for Exported {}

static EXPORTED: OnceLock<Exported> = OnceLock::new();

/// The body of the exported entry point: build the table once and return it; null if
/// describing a kind panicked (or two kinds share a name).
pub fn entry(
    name: &'static str,
    version: &'static str,
    kinds: fn() -> Vec<KindDef>,
) -> *const PluginTable {
    let built = guarded(|| {
        install_panic_hook();
        let exported = EXPORTED.get_or_init(|| build(name, version, kinds()));
        &exported.table as *const PluginTable
    });
    built.unwrap_or(std::ptr::null())
}

fn build(name: &'static str, version: &'static str, kinds: Vec<KindDef>) -> Exported {
    for (i, kind) in kinds.iter().enumerate() {
        if kinds[..i].iter().any(|k| k.name == kind.name) {
            panic!(
                "two stages of this plugin have the kind name `{}`",
                kind.name
            );
        }
    }
    let infos: Vec<KindInfo> = kinds
        .iter()
        .map(|k| KindInfo {
            name: Slice::new(k.name.as_bytes()),
            description: Slice::new(k.description.as_bytes()),
            config_schema: Slice::new(k.schema.as_bytes()),
        })
        .collect();
    Exported {
        table: PluginTable {
            abi_version: abi::ABI_VERSION,
            plugin_name: Slice::new(name.as_bytes()),
            plugin_version: Slice::new(version.as_bytes()),
            kinds: infos.as_ptr(),
            kinds_len: infos.len(),
            create: Some(create),
            process: Some(process),
            destroy: Some(destroy),
            free_buffer: Some(free_buffer),
        },
        kinds,
        _infos: infos,
    }
}

thread_local! {
    /// Whether this thread is inside a guarded call (its panics are reported, not printed).
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// Where the last guarded panic on this thread happened.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The plugin has its own copy of std and so its own panic hook, which would print to stderr
/// past the host's logger. Inside guarded calls it only notes the location (the message goes
/// to the host with the error); elsewhere (a thread the plugin started) it does what it did.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Run `f`, turning a panic into its message (with where it happened).
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|payload| {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic with a non-string payload".to_owned()
        };
        match PANIC_AT.with(|p| p.borrow_mut().take()) {
            Some(at) => format!("{message} (at {at})"),
            None => message,
        }
    })
}

fn to_buffer(bytes: Vec<u8>) -> Buffer {
    if bytes.is_empty() {
        return Buffer::EMPTY;
    }
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    Buffer {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    }
}

fn class_code(class: ErrorClass) -> u32 {
    match class {
        ErrorClass::Transient => abi::REPLY_TRANSIENT,
        ErrorClass::Permanent => abi::REPLY_PERMANENT,
        ErrorClass::Fatal => abi::REPLY_FATAL,
    }
}

/// # Safety
///
/// `s` is null or points to `len` bytes valid for `'a`.
unsafe fn utf8<'a>(s: Slice) -> &'a str {
    // SAFETY: the caller vouches for `s`.
    let bytes = unsafe { s.as_bytes() };
    std::str::from_utf8(bytes).unwrap_or("")
}

unsafe extern "C" fn create(
    kind: Slice,
    config: Slice,
    instance: *mut *mut c_void,
    error: *mut Buffer,
) -> u32 {
    if instance.is_null() || error.is_null() {
        return abi::REPLY_FATAL;
    }
    let made = guarded(|| {
        let exported = EXPORTED
            .get()
            .ok_or_else(|| Error::fatal("`create` was called before the entry point"))?;
        // SAFETY: the host passes slices valid for the call (ABI contract).
        let (kind, config) = unsafe { (utf8(kind), config.as_bytes()) };
        let def = exported
            .kinds
            .iter()
            .find(|k| k.name == kind)
            .ok_or_else(|| Error::permanent(format!("this plugin has no kind `{kind}`")))?;
        (def.create)(config)
    });
    let (code, message) = match made {
        Ok(Ok(stage)) => {
            // SAFETY: `instance` is non-null and points to writable storage (ABI contract).
            // The double box makes the instance a thin pointer; `destroy` takes it back.
            unsafe { instance.write(Box::into_raw(Box::new(stage)).cast::<c_void>()) };
            return abi::CREATE_OK;
        }
        Ok(Err(e)) => (class_code(e.class), e.message),
        Err(panic) => (abi::REPLY_PANIC, panic),
    };
    // SAFETY: `error` is non-null and points to writable storage (ABI contract).
    unsafe { error.write(to_buffer(message.into_bytes())) };
    code
}

unsafe extern "C" fn process(
    instance: *const c_void,
    record: Slice,
    cx: *const CallContext,
    reply: *mut Reply,
) {
    if reply.is_null() {
        return;
    }
    let answered = guarded(|| -> Result<Vec<u8>, (u32, Error)> {
        let fail = |e: Error| (class_code(e.class), e);
        if instance.is_null() || cx.is_null() {
            return Err(fail(Error::fatal(
                "the host passed a null instance or context",
            )));
        }
        // SAFETY: `instance` came from `create` and is not destroyed while calls run, and `cx`
        // is valid for the call (ABI contract).
        let (stage, host) = unsafe { (&*instance.cast::<Box<dyn Erased>>(), &*cx) };
        // SAFETY: the host's slices are valid for the call (ABI contract).
        let (key, stage_name, bytes) =
            unsafe { (utf8(host.key), utf8(host.stage), record.as_bytes()) };
        let record: Record = serde_json::from_slice(bytes).map_err(|e| {
            fail(Error::permanent(format!(
                "the host sent a record that is not valid JSON: {e}"
            )))
        })?;
        let now = Instant::now();
        let deadline = now
            .checked_add(Duration::from_millis(host.remaining_ms))
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        let context = Context {
            key,
            stage: stage_name,
            attempt: host.attempt,
            deadline,
            host: Some(host),
        };
        match stage.process(record, &context).map_err(fail)? {
            Outcome::Continue(record) => serde_json::to_vec(&record).map_err(|e| {
                fail(Error::permanent(format!(
                    "cannot serialize the record: {e}"
                )))
            }),
            Outcome::Skip(reason) => Err((abi::REPLY_SKIP, Error::permanent(reason))),
        }
    });
    let value = match answered {
        Ok(Ok(json)) => Reply {
            code: abi::REPLY_CONTINUE,
            retry_after_ms: abi::NO_RETRY_AFTER,
            body: to_buffer(json),
        },
        Ok(Err((code, e))) => Reply {
            code,
            retry_after_ms: e.retry_after.map_or(abi::NO_RETRY_AFTER, |d| {
                u64::try_from(d.as_millis()).unwrap_or(abi::NO_RETRY_AFTER - 1)
            }),
            body: to_buffer(e.message.into_bytes()),
        },
        Err(panic) => Reply {
            code: abi::REPLY_PANIC,
            retry_after_ms: abi::NO_RETRY_AFTER,
            body: to_buffer(panic.into_bytes()),
        },
    };
    // SAFETY: `reply` is non-null and points to writable storage (ABI contract).
    unsafe { reply.write(value) };
}

unsafe extern "C" fn destroy(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // A panicking `Drop` has no one to report to; it is contained and dropped.
    let _ = guarded(|| {
        // SAFETY: `instance` came from `create` (a leaked `Box<Box<dyn Erased>>`) and the host
        // destroys it once, after its last call.
        drop(unsafe { Box::from_raw(instance.cast::<Box<dyn Erased>>()) });
    });
}

unsafe extern "C" fn free_buffer(buffer: Buffer) {
    if buffer.ptr.is_null() {
        return;
    }
    let _ = guarded(|| {
        // SAFETY: a non-null buffer was made by `to_buffer` from a `Vec<u8>` of this library,
        // and the host gives each back once.
        drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
    });
}

/// Ask the host whether the call should stop.
pub(crate) fn host_is_cancelled(host: &CallContext) -> bool {
    match host.is_cancelled {
        // SAFETY: the callback and its `host` pointer are valid during the call, which the
        // `Context` borrowing `host` cannot outlive.
        Some(f) => unsafe { f(host.host) != 0 },
        None => false,
    }
}

/// Log through the host.
pub(crate) fn host_log(host: &CallContext, level: u32, message: &str) {
    if let Some(f) = host.log {
        // SAFETY: as in `host_is_cancelled`; `message` outlives the call.
        unsafe { f(host.host, level, Slice::new(message.as_bytes())) };
    }
}
