// A residual stack of attention layers run tensor-parallel over heads: every layer of the
// unsharded stack cut to one rank's heads, each layer's output all-reduced before the residual
// add, so that every rank carries the same residual stream. It is an AttentionStack, so its
// forward, and a decode step captured in a DecodeGraph (the all-reduce included), are the ones
// of the plain stack.
#pragma once

#include "dsattn/layer/attention_stack.h"
#include "dsattn/parallel/communicator.h"
#include "dsattn/parallel/head_shard.h"

namespace dsattn::parallel {

// Rank `shard.rank`'s stack, on `device`: each layer of `full` (on any device) cut to the shard
// (rank_local_layer), the input norms copied, and each layer's output summed over `comm`, which
// must be the shard's rank of a group of shard.world_size and outlive the stack. Throws
// InvalidArgument when the shard does not fit full's configuration or comm.
AttentionStack rank_local_stack(const AttentionStack& full, const HeadShard& shard,
                                Communicator& comm, Device device);

}  // namespace dsattn::parallel
