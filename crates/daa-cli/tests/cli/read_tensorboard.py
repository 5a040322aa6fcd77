"""Reads a TensorBoard log folder with TensorBoard's own reader and prints
what it holds as JSON: {"scalars": {tag: [[step, value], ...]},
"texts": {tag: [[step, text], ...]}}.

The reader is the plugin event accumulator, the one behind TensorBoard's
Python data provider: scalars and texts are tensors there, filed by plugin,
and a `SessionLog START` drops everything logged at its step and after. (The
older `event_accumulator` drops scalars but keeps texts.)"""

import json
import sys

from tensorboard.backend.event_processing import plugin_event_accumulator as pa
from tensorboard.util import tensor_util

acc = pa.EventAccumulator(sys.argv[1], size_guidance={pa.TENSORS: 0})
acc.Reload()


def tags_of(plugin):
    try:
        return sorted(acc.PluginTagToContent(plugin))
    except KeyError:
        return []


def values(tag):
    return [[e.step, tensor_util.make_ndarray(e.tensor_proto).item()] for e in acc.Tensors(tag)]


texts = {t: [[s, v.decode()] for s, v in values(t)] for t in tags_of("text")}
print(json.dumps({"scalars": {t: values(t) for t in tags_of("scalars")}, "texts": texts}))
