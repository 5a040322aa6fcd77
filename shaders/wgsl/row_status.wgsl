// Shared by token_stats.wgsl and logits_backward.wgsl: per-row status
// (NaN, +inf, empty distribution) reported to the host, which turns it into
// the same errors the CPU backends return (`RowFault` in crates/daa-core/src/logits.rs).
// Codes: 0 ok, 1 NaN at column, 2 every logit −inf, 3 +inf at column.

@group(0) @binding(3) var<storage, read_write> status: array<u32>; // [rows, 2]: code, column

const STATUS_OK: u32 = 0u;
const STATUS_NAN: u32 = 1u;
const STATUS_EMPTY: u32 = 2u;
const STATUS_INF: u32 = 3u;

var<workgroup> nan_column: atomic<u32>;
var<workgroup> inf_column: atomic<u32>;
var<workgroup> row_fault: u32;

// Called by one invocation before the row is read.
fn status_reset() {
    atomicStore(&nan_column, 0xffffffffu);
    atomicStore(&inf_column, 0xffffffffu);
}

// Notes a logit that is NaN or +inf; returns true when `x` is usable.
// Tested on the bits: shader compilers may fold `x != x` away.
fn status_check(x: f32, column: u32) -> bool {
    let bits = bitcast<u32>(x);
    if ((bits & 0x7f800000u) != 0x7f800000u) {
        return true; // finite
    }
    if ((bits & 0x007fffffu) != 0u) {
        atomicMin(&nan_column, column);
        return false;
    }
    if (bits == 0x7f800000u) {
        atomicMin(&inf_column, column);
        return false;
    }
    return true; // −inf: probability 0
}

// Writes the row's status (the first bad column wins); run by one invocation
// after a barrier, then read by all with workgroupUniformLoad(&row_fault).
fn status_write(row: u32, z: f32) {
    let nan = atomicLoad(&nan_column);
    let inf = atomicLoad(&inf_column);
    var code = STATUS_OK;
    var column = 0u;
    if (nan != 0xffffffffu || inf != 0xffffffffu) {
        code = select(STATUS_INF, STATUS_NAN, nan < inf);
        column = min(nan, inf);
    } else if (z == 0.0) {
        code = STATUS_EMPTY;
    }
    status[row * 2u] = code;
    status[row * 2u + 1u] = column;
    row_fault = code;
}
