"""Communication of the domain-decomposed MPNN over torch.distributed: process groups, halo exchange, reductions,
shards and gathering. The step that uses them is :func:`dsmpnn.train.step.run_step`."""

from dsmpnn.distributed.agree import all_gather_objects, any_rank, quiet_unless_main, run_agreed
from dsmpnn.distributed.compare import TOLERANCE, max_rel_diff
from dsmpnn.distributed.exchange import (EXCHANGE_MODES, ExchangeStats, HaloExchange, LayerExchange,
                                         make_exchange)
from dsmpnn.distributed.launch import SHUTDOWN_TIMEOUT_S, launch_module, run_processes
from dsmpnn.distributed.process_group import (DEFAULT_TIMEOUT_S, DistContext, barrier, collective, current_context,
                                              default_backend, destroy_process_group, init_from_env,
                                              init_process_group)
from dsmpnn.distributed.reduce import all_reduce_sum, allreduce_gradients, broadcast_parameters
from dsmpnn.distributed.shard import LocalShard, gather_owned, make_shard

__all__ = ["DEFAULT_TIMEOUT_S", "EXCHANGE_MODES", "SHUTDOWN_TIMEOUT_S", "TOLERANCE", "DistContext",
           "ExchangeStats", "HaloExchange", "LayerExchange", "LocalShard", "all_gather_objects",
           "all_reduce_sum", "allreduce_gradients", "any_rank", "barrier", "broadcast_parameters",
           "collective", "current_context", "default_backend", "destroy_process_group", "gather_owned",
           "init_from_env", "init_process_group", "launch_module", "make_exchange", "make_shard", "max_rel_diff",
           "quiet_unless_main", "run_agreed", "run_processes"]
