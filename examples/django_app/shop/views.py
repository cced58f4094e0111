"""Push a job from a view, and read its outcome."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from reports import ReportJob

import workers.jobs
from workers import Job


@csrf_exempt  # an API for the example; keep CSRF on for your forms
@require_POST
def start_report(request: HttpRequest, project: str) -> JsonResponse:
    return JsonResponse({"id": Job.push(ReportJob(project=project))})


@require_GET
def report(request: HttpRequest, job_id: str) -> JsonResponse:
    job = workers.jobs.get(job_id)
    if job is None:
        return JsonResponse({"status": "unknown"}, status=404)
    return JsonResponse({"status": job.status, "result": job.result})
