"""Communication of the domain-decomposed MPNN over torch.distributed: process groups, halo exchange, reductions,
shards and gathering. The step that uses them is :func:`dsmpnn.train.step.run_step`."""

from typing import TYPE_CHECKING

from dsmpnn._lazy import lazy_package

if TYPE_CHECKING:
    from dsmpnn.distributed.agree import all_gather_objects, any_rank, quiet_unless_main, run_agreed
    from dsmpnn.distributed.compare import TOLERANCE, max_rel_diff
    from dsmpnn.distributed.exchange import (EXCHANGE_MODES, ExchangeStats, HaloExchange, LayerExchange,
                                             make_exchange)
    from dsmpnn.distributed.launch import SHUTDOWN_TIMEOUT_S, launch_module, run_processes
    from dsmpnn.distributed.process_group import (DEFAULT_TIMEOUT_S, DistContext, barrier, collective, current_context,
                                                  default_backend, destroy_process_group, init_from_env,
                                                  init_process_group, local_ranks)
    from dsmpnn.distributed.reduce import all_reduce_sum, allreduce_gradients, broadcast_parameters
    from dsmpnn.distributed.shard import LocalShard, gather_owned, make_shard

_LAZY = {"all_gather_objects": "agree", "any_rank": "agree", "quiet_unless_main": "agree", "run_agreed": "agree",
         "TOLERANCE": "compare", "max_rel_diff": "compare", "EXCHANGE_MODES": "exchange",
         "ExchangeStats": "exchange", "HaloExchange": "exchange", "LayerExchange": "exchange", "make_exchange":
         "exchange", "SHUTDOWN_TIMEOUT_S": "launch", "launch_module": "launch", "run_processes": "launch",
         "DEFAULT_TIMEOUT_S": "process_group", "DistContext": "process_group", "barrier": "process_group",
         "collective": "process_group", "current_context": "process_group", "default_backend": "process_group",
         "destroy_process_group": "process_group", "init_from_env": "process_group", "init_process_group":
         "process_group", "local_ranks": "process_group", "all_reduce_sum": "reduce",
         "allreduce_gradients": "reduce", "broadcast_parameters": "reduce", "LocalShard": "shard",
         "gather_owned": "shard", "make_shard": "shard"}
__all__ = ["DEFAULT_TIMEOUT_S", "DistContext", "EXCHANGE_MODES", "ExchangeStats", "HaloExchange", "LayerExchange",
           "LocalShard", "SHUTDOWN_TIMEOUT_S", "TOLERANCE", "all_gather_objects", "all_reduce_sum",
           "allreduce_gradients", "any_rank", "barrier", "broadcast_parameters", "collective", "current_context",
           "default_backend", "destroy_process_group", "gather_owned", "init_from_env", "init_process_group",
           "launch_module", "local_ranks", "make_exchange", "make_shard", "max_rel_diff", "quiet_unless_main",
           "run_agreed", "run_processes"]
lazy_package(__name__)
