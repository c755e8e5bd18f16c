"""The NWB spikes pipeline: NWB units, stimulus frames, behaviour and trials -> the spikes
layout of the tensor store (:mod:`mindzoo.datasets.spike_store`). Steps in
:mod:`mindzoo.pipelines.spikes.pipeline`, reading in :mod:`mindzoo.pipelines.spikes.nwb`,
settings in :mod:`mindzoo.pipelines.spikes.config`."""
