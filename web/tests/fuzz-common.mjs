// What the run viewer's fast-check scripts (metrics.fuzz.mjs,
// samples.fuzz.mjs) share: the `--time SECONDS` argument, a committed file's
// lines mutated (dropped, cut, spliced, joined with CRLF or blank lines), and
// the timed property run that reports `NAME: N inputs in S s`.

import fc from "fast-check";

/** Seconds from `--time SECONDS` (default 5); exits 2 on a bad value. */
export function secondsFromArgs() {
  const args = process.argv.slice(2);
  const timeAt = args.indexOf("--time");
  const seconds = timeAt >= 0 ? Number(args[timeAt + 1]) : 5;
  if (!(seconds > 0)) {
    console.error("--time takes a number of seconds");
    process.exit(2);
  }
  return seconds;
}

/** Texts made of a subset of `lines`, each possibly cut and spliced with garbage, joined by a random newline. */
export function mutatedLines(lines) {
  return fc
    .tuple(
      fc.subarray(lines),
      fc.array(fc.tuple(fc.nat(), fc.nat(), fc.string({ maxLength: 8 })), { maxLength: 6 }),
      fc.constantFrom("\n", "\r\n", "\n\n"),
    )
    .map(([kept, edits, newline]) => {
      const out = [...kept];
      for (const [at, cut, insert] of edits) {
        if (out.length === 0) break;
        const i = at % out.length;
        const line = out[i];
        const c = cut % (line.length + 1);
        out[i] = line.slice(0, c) + insert + line.slice(c);
      }
      return out.join(newline);
    });
}

/** Runs `check` on texts from `arbitraries` for `seconds`; prints the count, or the shrunk failure and exits 1. */
export function runFor(name, seconds, arbitraries, check) {
  const started = Date.now();
  let runs = 0;
  const result = fc.check(
    fc.property(fc.oneof(...arbitraries), (text) => {
      runs += 1;
      check(text);
    }),
    { numRuns: Number.MAX_SAFE_INTEGER, interruptAfterTimeLimit: seconds * 1000, markInterruptAsFailure: false, seed: Date.now() | 0 },
  );
  const elapsed = (Date.now() - started) / 1000;
  if (result.failed) {
    console.error(fc.defaultReportMessage(result));
    process.exit(1);
  }
  console.log(`${name}: ${runs} inputs in ${elapsed.toFixed(0)} s, no failure (fast-check seed ${result.seed})`);
}
