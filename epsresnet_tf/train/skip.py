"""The backward skip of discarded blocks (docs/PROFILE.md "Backward skip").

With T a constant for differentiation (an ε-gate's `gate_gradient=False`, the default and
the authors' choice), a block whose T is 0 in a step passes exact zeros into its branch:
the backward through its convolutions, BatchNorms and ReLUs computes nothing but zeros.
`BranchSkip` runs the network's graph as Keras's Functional does, except that each such
branch and its gate run inside one `tf.custom_gradient` whose gradient is a `tf.cond`:
the branch's own backward (recorded by a tape in the forward) when any T of the step is
non-zero, zeros of the right shapes when every T is 0. The forward, BatchNorm's moving
statistics and the monitors are the same ops; the weights of a closed block change by
weight decay alone, as without the skip, since the decay is its own term of the loss.

Written by hand because neither Keras nor TensorFlow has a backward that depends on a
value of the forward: a gradient of a `tf.cond` taken in the forward is a `tf.cond` on
the forward's predicate, which is known only once the branch has run.
"""

import dataclasses
import heapq

import tensorflow as tf
from keras import tree

# How Keras's Functional passes `training` to each layer it calls (only to those that take
# it): the same calls, so the forward here is Keras's own, op for op.
from keras.src.models.functional import operation_fn

from epsresnet_tf.gates.registry import gate_by_block
from epsresnet_tf.layers import EpsilonGate


@dataclasses.dataclass
class SkippableBranch:
    """One block's branch: its nodes in the order they run, the tensors it reads from the
    rest of the net (`entries`) and its ε-gate's node, whose output S(F) leaves it."""

    block: str
    gate: EpsilonGate
    gate_node: object
    nodes: list
    entries: list


NOT_EPSILON = "not an ε-gate (its gradient when discarded is not known to be zero)"
GATE_GRADIENT = "gate_gradient=True: T is differentiated, so a closed block's gradient is not 0"
#: The reasons that come from the gate itself (its kind, its setting), not from the graph.
EXEMPT_BY_GATE = (NOT_EPSILON, GATE_GRADIENT)


def skip_exempt(layer) -> str | None:
    """Why a gate's block cannot skip its backward, or None where it can."""
    if not isinstance(layer, EpsilonGate):
        return NOT_EPSILON
    if layer.gate_gradient:
        return GATE_GRADIENT
    return None


def skippable_branches(net) -> tuple[dict, dict]:
    """({block id: SkippableBranch}, {block id: why not}) of a gated functional net.

    A branch is every node between the unit's input and its gate whose outputs go only
    into the branch itself or the gate (read from the graph, so a pre-activation shared
    with the shortcut stays outside, as does a node read by a side head)."""
    depth_of, consumers = {}, {}
    for depth, nodes in net._nodes_by_depth.items():
        for node in nodes:
            depth_of[id(node)] = depth
            for t in node.input_tensors:
                consumers.setdefault(id(t), []).append(node)
    outputs = {id(t) for t in net.outputs}
    branches, exempt = {}, {}
    for block, layer in gate_by_block(net).items():
        why = skip_exempt(layer)
        if why is None and len(layer._inbound_nodes) != 1:
            why = "its gate layer is called more than once"
        if why is not None:
            exempt[block] = why
            continue
        gate_node = layer._inbound_nodes[0]
        members = {id(gate_node): gate_node}
        # Consumers lie at smaller depths than their producers: visiting candidates from
        # the gate outwards by increasing depth decides every consumer first.
        heap, seen = [], set()
        for parent in gate_node.parent_nodes:
            heapq.heappush(heap, (depth_of[id(parent)], id(parent), parent))
        while heap:
            _, key, node = heapq.heappop(heap)
            if key in seen:
                continue
            seen.add(key)
            if node.is_input or not node.operation:
                continue
            inside = all(
                id(t) not in outputs
                and all(id(c) in members for c in consumers.get(id(t), []))
                and consumers.get(id(t))
                for t in node.outputs
            )
            if not inside:
                continue
            members[key] = node
            for parent in node.parent_nodes:
                heapq.heappush(heap, (depth_of[id(parent)], id(parent), parent))
        nodes = sorted(
            (n for k, n in members.items() if k != id(gate_node)),
            key=lambda n: -depth_of[id(n)],
        )
        if not nodes:
            exempt[block] = "no branch layers of its own"
            continue
        produced = {id(t) for n in nodes for t in n.outputs}
        entries, seen_entries = [], set()
        for n in nodes:
            for t in n.input_tensors:
                if id(t) not in produced and id(t) not in seen_entries:
                    seen_entries.add(id(t))
                    entries.append(t)
        why = _inexact(nodes, entries, consumers)
        if why is not None:
            exempt[block] = why
            continue
        branches[block] = SkippableBranch(block, layer, gate_node, nodes + [gate_node], entries)
    return branches, exempt


def _inexact(nodes, entries, consumers) -> str | None:
    """Why skipping a branch could change a rounding, or None where it cannot.

    TensorFlow sums the gradients a tensor gets from its consumers in the order its tape
    reaches them, and the skip changes that order (the branch's gradient comes as one
    tensor, sooner). A sum of two terms is the same in either order; of three it is not.
    So every tensor the branch reads may have two consumers at most (its unit input: the
    branch and the shortcut; not a side head besides), and no branch layer may be shared
    (a ShaResNet kernel sums the gradients of every block that uses it)."""
    for t in entries:
        if len(consumers.get(id(t), [])) > 2:
            return (
                "its input feeds more than the branch and the shortcut (a side head): "
                "TensorFlow would sum that input's gradients in another order"
            )
    for n in nodes:
        if len(getattr(n.operation, "_inbound_nodes", [])) > 1:
            return (
                "a layer of its branch is shared with other blocks (ShaResNet): TensorFlow "
                "would sum that layer's weight gradients in another order"
            )
    return None


def _run_node(node, values, training, **extra):
    """Call one node's layer on the tensors computed so far (`values`: {id(Keras tensor):
    tensor}) as Keras's Functional does; its outputs go into `values`. Returns them."""
    args, kwargs = node.arguments.fill_in(values)
    outs = operation_fn(node.operation, training=training)(*args, **extra, **kwargs)
    if not extra:
        for ref, value in zip(node.outputs, tree.flatten(outs)):
            values[id(ref)] = value
    return outs


class BranchSkip:
    """Runs `net` in training with the backward of each closed block skipped (module doc).
    Built once per net; `__call__(x)` returns what `net(x, training=True)` returns."""

    def __init__(self, net):
        self.net = net
        self.branches, self.exempt = skippable_branches(net)
        self._gate_nodes = {id(b.gate_node): b for b in self.branches.values()}
        self._inside = {id(n) for b in self.branches.values() for n in b.nodes}

    def __call__(self, x, training=True):
        net = self.net
        values = {id(ref): value for ref, value in zip(net.inputs, tree.flatten(x))}
        for depth in sorted(net._nodes_by_depth, reverse=True):
            for node in net._nodes_by_depth[depth]:
                if node.is_input or not node.operation:
                    continue
                branch = self._gate_nodes.get(id(node))
                if branch is not None:
                    entries = [values[id(t)] for t in branch.entries]
                    values[id(node.outputs[0])] = self._run_branch(branch, entries, training)
                elif id(node) not in self._inside:  # a branch's node runs with its gate
                    _run_node(node, values, training)
        return tree.pack_sequence_as(net._outputs_struct, [values[id(t)] for t in net.outputs])

    def _run_branch(self, branch, entries, training):
        @tf.custom_gradient
        def gated_branch(*inputs):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                values = {id(ref): v for ref, v in zip(branch.entries, inputs)}
                for node in branch.nodes[:-1]:
                    _run_node(node, values, training)
                out, gate = _run_node(branch.gate_node, values, training, return_gate=True)
            closed = tf.equal(tf.reduce_max(gate), 0.0)

            def grad(upstream, variables=None):
                variables = list(variables or [])
                trained = [i for i, v in enumerate(variables) if v.trainable]
                sources = list(inputs) + [variables[i] for i in trained]

                def backward():
                    got = tape.gradient(out, sources, output_gradients=upstream)
                    return [tf.zeros_like(s) if g is None else g for s, g in zip(sources, got)]

                def skipped():
                    return [tf.zeros(tf.shape(s), s.dtype) for s in sources]

                got = tf.cond(closed, skipped, backward)
                var_grads = [None] * len(variables)  # the untrained (ε) get none
                for i, g in zip(trained, got[len(inputs) :]):
                    var_grads[i] = g
                return got[: len(inputs)], var_grads

            return out, grad

        return gated_branch(*entries)
