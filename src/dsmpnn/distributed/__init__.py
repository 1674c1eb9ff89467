"""Domain-decomposed MPNN over torch.distributed: process groups, halo exchange, reductions, runner, check."""

from typing import TYPE_CHECKING

from dsmpnn._lazy import lazy_package

if TYPE_CHECKING:
    from dsmpnn.distributed.agree import all_gather_objects, any_rank, quiet_unless_main, run_agreed
    from dsmpnn.distributed.check import TOLERANCE, check, max_rel_diff
    from dsmpnn.distributed.exchange import (EXCHANGE_MODES, ExchangeStats, HaloExchange, LayerExchange,
                                             make_exchange)
    from dsmpnn.distributed.launch import SHUTDOWN_TIMEOUT_S, launch_module, run_processes
    from dsmpnn.distributed.process_group import (DEFAULT_TIMEOUT_S, DistContext, barrier, collective, current_context,
                                                  default_backend, destroy_process_group, init_from_env,
                                                  init_process_group)
    from dsmpnn.distributed.reduce import (all_reduce_sum, allreduce_gradients, broadcast_parameters,
                                           distributed_mse)
    from dsmpnn.distributed.runner import (DistributedResult, LocalShard, distributed_forward_backward,
                                           forward_backward, forward_owned, gather_owned, make_shard, predict,
                                           train_step)

__all__ = ["DEFAULT_TIMEOUT_S", "EXCHANGE_MODES", "SHUTDOWN_TIMEOUT_S", "TOLERANCE", "DistContext",
           "DistributedResult", "ExchangeStats", "HaloExchange", "LayerExchange", "LocalShard", "all_gather_objects",
           "all_reduce_sum", "allreduce_gradients", "any_rank", "barrier", "broadcast_parameters", "check",
           "collective", "current_context", "default_backend", "destroy_process_group", "distributed_forward_backward",
           "distributed_mse",
           "forward_backward", "forward_owned", "gather_owned", "init_from_env", "init_process_group",
           "launch_module", "make_exchange", "make_shard", "max_rel_diff", "predict", "quiet_unless_main",
           "run_agreed", "run_processes", "train_step"]

_LAZY = {"all_gather_objects": "agree", "any_rank": "agree", "quiet_unless_main": "agree", "run_agreed": "agree",
         "TOLERANCE": "check", "check": "check", "max_rel_diff": "check", "EXCHANGE_MODES": "exchange",
         "ExchangeStats": "exchange", "HaloExchange": "exchange", "LayerExchange": "exchange", "make_exchange":
         "exchange", "SHUTDOWN_TIMEOUT_S": "launch", "launch_module": "launch", "run_processes": "launch",
         "DEFAULT_TIMEOUT_S": "process_group", "DistContext": "process_group", "barrier": "process_group",
         "collective": "process_group", "current_context": "process_group", "default_backend": "process_group",
         "destroy_process_group": "process_group", "init_from_env": "process_group", "init_process_group":
         "process_group", "all_reduce_sum": "reduce", "allreduce_gradients": "reduce", "broadcast_parameters":
         "reduce", "distributed_mse": "reduce", "DistributedResult": "runner", "LocalShard": "runner",
         "distributed_forward_backward": "runner", "forward_backward": "runner", "forward_owned": "runner",
         "gather_owned": "runner", "make_shard": "runner", "predict": "runner", "train_step": "runner"}
lazy_package(__name__)
