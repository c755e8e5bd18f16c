"""Seeded simulators that write BIDS datasets for the ``synthetic-*`` catalog entries.

- :mod:`~mindzoo.datasets.synthetic.fmri`: ``synthetic-fmri``, an NSD-like image experiment
  (configuration in ``fmri_config``, generative model in ``fmri_tuning``, ``fmri_anatomy`` and
  ``fmri_bold``).
- :mod:`~mindzoo.datasets.synthetic.ieeg`: ``synthetic-ieeg``, sEEG word reading.
- :mod:`~mindzoo.datasets.synthetic.eeg`: ``synthetic-eeg``, THINGS-EEG-like image-category ERPs.
- :mod:`~mindzoo.datasets.synthetic.spectral`: coloured noise shared by the two ephys simulators.
"""
