//! The C ABI between the stagewise host and a plugin library. Authors never touch it: the
//! [`export!`](crate::export) macro implements the plugin side, and the host in
//! `stagewise-core` the other. It is public so that both sides share one definition, and so
//! that it can be read as the specification of the boundary.
//!
//! # The handshake
//!
//! A plugin is a shared library that exports one symbol, [`ENTRY_SYMBOL`], an [`EntryFn`]
//! that takes nothing and returns a pointer to a [`PluginTable`] (null if the plugin could not
//! describe itself). The table's first field is [`PluginTable::abi_version`], a `u32` in every
//! version of this ABI: the host reads it before anything else, and refuses a library whose
//! version is not its own without reading further or calling anything else.
//!
//! # Calls
//!
//! - `create(kind, config)`: one instance per pipeline stage; `config` is the stage's own keys
//!   as a JSON object (UTF-8 bytes).
//! - `process(instance, record, cx, reply)`: one attempt on one item; `record` is
//!   `{"key": "…", "fields": {…}}` as JSON. The host may call it from several threads at once
//!   on the same instance. `cx` carries the item key, the attempt, the time left, and host
//!   callbacks for cancellation and logging, valid during the call only.
//! - `destroy(instance)`: once, after the last `process` of that instance has returned.
//! - `free_buffer(buffer)`: gives back a [`Buffer`] the plugin allocated (a reply body, an
//!   error message). The host never frees plugin memory itself, nor the plugin host memory:
//!   each side frees what it allocated.
//!
//! Every function of the table catches panics on the plugin side and reports them as
//! [`REPLY_PANIC`]; no unwinding crosses the boundary. Only `#[repr(C)]` structs, integers and
//! pointers cross it. The library is never unloaded, so the strings of the table (name,
//! version, kinds, schemas) stay valid for the life of the process.

// Reading a borrowed slice from a raw pointer is the one unsafe thing here.
#![allow(unsafe_code)]

use std::ffi::c_void;

/// The version of this ABI. The host and the plugin must agree exactly.
pub const ABI_VERSION: u32 = 1;

/// The name of the one symbol a plugin library exports.
pub const ENTRY_SYMBOL: &str = "stagewise_plugin_entry";

/// The type of [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const PluginTable;

/// `process` answered with a record: the body is `{"key": …, "fields": {…}}` as JSON.
pub const REPLY_CONTINUE: u32 = 0;
/// `process` skipped the item: the body is the reason (UTF-8).
pub const REPLY_SKIP: u32 = 1;
/// A transient error (retried): the body is the message (UTF-8).
pub const REPLY_TRANSIENT: u32 = 2;
/// A permanent error (the item fails): the body is the message (UTF-8).
pub const REPLY_PERMANENT: u32 = 3;
/// A fatal error (the run stops): the body is the message (UTF-8).
pub const REPLY_FATAL: u32 = 4;
/// The plugin panicked: the body is the panic message (UTF-8).
pub const REPLY_PANIC: u32 = 5;

/// `create` succeeded (any other value is one of the `REPLY_*` error codes).
pub const CREATE_OK: u32 = 0;

/// [`Reply::retry_after_ms`] when there is no hint.
pub const NO_RETRY_AFTER: u64 = u64::MAX;

/// Log levels of [`CallContext::log`].
pub const LOG_ERROR: u32 = 1;
/// See [`LOG_ERROR`].
pub const LOG_WARN: u32 = 2;
/// See [`LOG_ERROR`].
pub const LOG_INFO: u32 = 3;
/// See [`LOG_ERROR`].
pub const LOG_DEBUG: u32 = 4;
/// See [`LOG_ERROR`].
pub const LOG_TRACE: u32 = 5;

/// Borrowed bytes (often UTF-8): valid for as long as the side that made it says (the call, or
/// the process for the strings of the table). A null pointer is the empty slice.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Slice {
    /// First byte, or null.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl Slice {
    /// The empty slice.
    pub const EMPTY: Slice = Slice {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// A view of `bytes`; it must not outlive them.
    pub fn new(bytes: &[u8]) -> Slice {
        Slice {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes.
    ///
    /// # Safety
    ///
    /// `ptr` is null, or points to `len` initialized bytes that stay valid and unchanged for
    /// `'a`. A length no allocation can have (over `isize::MAX`) reads as empty rather than
    /// as undefined behaviour.
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 || self.len > isize::MAX as usize {
            &[]
        } else {
            // SAFETY: the caller vouches for `ptr` and `len`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// Bytes allocated by the plugin and handed to the host, which reads them and gives them back
/// with [`PluginTable::free_buffer`]. A null pointer is the empty buffer (nothing to free).
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    /// First byte, or null.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocated capacity (the plugin's business).
    pub cap: usize,
}

impl Buffer {
    /// The empty buffer.
    pub const EMPTY: Buffer = Buffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    /// The bytes, borrowed.
    ///
    /// # Safety
    ///
    /// `ptr` is null, or points to `len` initialized bytes that stay valid until the buffer is
    /// freed.
    pub unsafe fn as_bytes(&self) -> &[u8] {
        // SAFETY: the caller vouches for `ptr` and `len`.
        unsafe {
            Slice {
                ptr: self.ptr,
                len: self.len,
            }
            .as_bytes()
        }
    }
}

/// One kind of stage a plugin offers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// The kind's name (`plugin_kind = "…"`), UTF-8.
    pub name: Slice,
    /// One line saying what it does, UTF-8 (may be empty).
    pub description: Slice,
    /// A JSON Schema of the stage's own keys, as JSON text: an object schema.
    pub config_schema: Slice,
}

/// What one `process` call is handed besides the record. Valid during the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CallContext {
    /// The item's key, UTF-8.
    pub key: Slice,
    /// The stage's name in the pipeline, UTF-8.
    pub stage: Slice,
    /// The attempt, from 1.
    pub attempt: u32,
    /// Milliseconds left before the attempt's deadline when the call began.
    pub remaining_ms: u64,
    /// Opaque to the plugin: passed back to the callbacks.
    pub host: *const c_void,
    /// Answers non-zero when the attempt should stop (cancelled, or past its deadline). Cheap:
    /// poll it between steps.
    pub is_cancelled: Option<unsafe extern "C" fn(host: *const c_void) -> u32>,
    /// Logs `message` (UTF-8) at `level` (`LOG_*`) through the host's logger, with the stage
    /// and the item's key attached.
    pub log: Option<unsafe extern "C" fn(host: *const c_void, level: u32, message: Slice)>,
}

/// What `process` answers; the plugin writes it through the pointer it is given.
#[repr(C)]
#[derive(Debug)]
pub struct Reply {
    /// One of the `REPLY_*` codes.
    pub code: u32,
    /// For an error: wait at least this long before the next attempt; [`NO_RETRY_AFTER`] for
    /// none.
    pub retry_after_ms: u64,
    /// The record, reason or message; freed with [`PluginTable::free_buffer`].
    pub body: Buffer,
}

/// `create`: make an instance of `kind` from `config` (a JSON object). On success it writes the
/// instance to `*instance` and returns [`CREATE_OK`]; otherwise it writes a message to `*error`
/// and returns a `REPLY_*` error code.
pub type CreateFn = unsafe extern "C" fn(
    kind: Slice,
    config: Slice,
    instance: *mut *mut c_void,
    error: *mut Buffer,
) -> u32;

/// `process`: one attempt on one record; writes the answer to `*reply`.
pub type ProcessFn = unsafe extern "C" fn(
    instance: *const c_void,
    record: Slice,
    cx: *const CallContext,
    reply: *mut Reply,
);

/// `destroy`: drop an instance.
pub type DestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// `free_buffer`: give back a buffer the plugin allocated.
pub type FreeBufferFn = unsafe extern "C" fn(buffer: Buffer);

/// What [`EntryFn`] returns. Lives as long as the process.
#[repr(C)]
#[derive(Debug)]
pub struct PluginTable {
    /// [`ABI_VERSION`] of the SDK the plugin was built with. Always the first field, always a
    /// `u32`: the host reads it before anything else.
    pub abi_version: u32,
    /// The plugin's name (its package name), UTF-8.
    pub plugin_name: Slice,
    /// The plugin's version, UTF-8.
    pub plugin_version: Slice,
    /// The kinds it offers: `kinds_len` entries.
    pub kinds: *const KindInfo,
    /// Number of entries at `kinds`.
    pub kinds_len: usize,
    /// See [`CreateFn`].
    pub create: Option<CreateFn>,
    /// See [`ProcessFn`].
    pub process: Option<ProcessFn>,
    /// See [`DestroyFn`].
    pub destroy: Option<DestroyFn>,
    /// See [`FreeBufferFn`].
    pub free_buffer: Option<FreeBufferFn>,
}
