"""kshot.pipelines."""
