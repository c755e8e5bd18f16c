"""mindzoo.pipelines."""
