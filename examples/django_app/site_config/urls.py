from django.urls import path
from shop import views

urlpatterns = [
    path("reports/<str:project>", views.start_report),
    path("reports/<str:job_id>/status", views.report),
]
